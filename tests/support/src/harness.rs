//! The libtest-mimic harness: trials built from a [`Need`] and [`decide`], and [`run`].

use std::fmt;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion};
pub use libtest_mimic::{Failed, Trial};

use crate::{Decision, Need, decide, in_ci};

/// What a test body returns: `()` or a `Result` whose error is reported with `{:?}` (for
/// `anyhow::Error`, the message and its causes), as libtest reports a `#[test]`'s error.
pub trait TestResult {
    /// The outcome as libtest-mimic takes it.
    fn into_result(self) -> Result<(), Failed>;
}

impl TestResult for () {
    fn into_result(self) -> Result<(), Failed> {
        Ok(())
    }
}

impl<E: fmt::Debug> TestResult for Result<(), E> {
    fn into_result(self) -> Result<(), Failed> {
        self.map_err(|e| Failed::from(format!("{e:?}")))
    }
}

/// A test named `name` that runs `body` with what `need` found; when something is missing, it
/// fails under CI and is ignored outside CI (see [`decide`]).
pub fn trial<T, R>(
    name: impl Into<String>,
    need: Need<T>,
    body: impl FnOnce(T) -> R + Send + 'static,
) -> Trial
where
    T: Send + 'static,
    R: TestResult,
{
    let name = name.into();
    match decide(in_ci(), need) {
        Decision::Run(v) => Trial::test(name, move || body(v).into_result()),
        Decision::Fail(msg) => Trial::test(name, move || Err(Failed::from(msg))),
        Decision::Ignore(reason) => {
            Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
        }
    }
}

/// A test that needs nothing from outside the process.
pub fn plain<R: TestResult>(
    name: impl Into<String>,
    body: impl FnOnce() -> R + Send + 'static,
) -> Trial {
    trial(name, Ok(()), move |()| body())
}

/// A [`trial`] whose body is a future, run on a multi-threaded tokio runtime of `workers`
/// threads made for it (as `#[tokio::test(flavor = "multi_thread")]` does).
#[cfg(feature = "tokio")]
pub fn trial_async<T, R, F>(
    name: impl Into<String>,
    need: Need<T>,
    workers: usize,
    body: impl FnOnce(T) -> F + Send + 'static,
) -> Trial
where
    T: Send + 'static,
    F: Future<Output = R>,
    R: TestResult,
{
    trial(
        name,
        need,
        move |v| match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(body(v)).into_result(),
            Err(e) => Err(Failed::from(format!("starting a tokio runtime: {e}"))),
        },
    )
}

/// Trials of functions that need nothing from outside the process, each named as the function:
/// `plain_trials![a, b]` is `vec![plain("a", a), plain("b", b)]`.
#[macro_export]
macro_rules! plain_trials {
    ($($f:ident),* $(,)?) => {
        vec![$($crate::plain(stringify!($f), $f)),*]
    };
}

/// Runs the trials with the command line's arguments (the usual libtest ones: a filter,
/// `--exact`, `--list`, `--test-threads`, `--ignored`, ...) and returns the exit code.
pub fn run(trials: Vec<Trial>) -> ExitCode {
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
