//! Showing progress: indicatif bars on a terminal, JSON lines for machines, or nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imagestore_oci::{Event, Phase, Progress, Quiet};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::ProgressMode;

/// The progress reporter for `mode` (`auto`: bars only on a terminal and without `--json`).
pub fn reporter(mode: ProgressMode, json: bool) -> Arc<dyn Progress> {
    match mode {
        ProgressMode::Auto if !json && std::io::stderr().is_terminal() => Arc::new(Bars::new()),
        ProgressMode::Auto | ProgressMode::None => Arc::new(Quiet),
        ProgressMode::Bars => Arc::new(Bars::new()),
        ProgressMode::Json => Arc::new(JsonLines::default()),
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Download => "download",
        Phase::Write => "write",
        Phase::Export => "export",
        Phase::Upload => "upload",
    }
}

/// One bar per layer and phase.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(usize, Phase), ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

fn style(known: bool) -> ProgressStyle {
    let template = if known {
        "{prefix:<22} [{bar:28}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}"
    } else {
        "{prefix:<22} {spinner} {bytes:>10} {binary_bytes_per_sec:>12} {msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress for Bars {
    fn event(&self, event: Event) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        match event {
            Event::Start {
                layer,
                layers,
                phase,
                digest,
                total,
            } => {
                let bar = self.multi.add(match total {
                    Some(t) => ProgressBar::new(t).with_style(style(true)),
                    None => ProgressBar::no_length().with_style(style(false)),
                });
                bar.set_prefix(format!(
                    "layer {}/{layers} {}",
                    layer + 1,
                    phase_name(phase)
                ));
                bar.set_message(digest.hex().chars().take(12).collect::<String>());
                bar.enable_steady_tick(Duration::from_millis(250));
                bars.insert((layer, phase), bar);
            }
            Event::Advance {
                layer,
                phase,
                bytes,
            } => {
                if let Some(b) = bars.get(&(layer, phase)) {
                    b.inc(bytes);
                }
            }
            Event::Finish {
                layer,
                phase,
                skipped,
                ..
            } => {
                if let Some(b) = bars.remove(&(layer, phase)) {
                    if skipped {
                        b.finish_with_message("already stored");
                    } else {
                        if let Some(len) = b.length() {
                            b.set_position(len);
                        }
                        b.finish_with_message("done");
                    }
                }
            }
            Event::Retry {
                layer,
                attempt,
                resume_from,
                reason,
            } => {
                if let Some(b) = bars.get(&(layer, Phase::Download)) {
                    b.set_position(resume_from);
                    b.set_message(format!("retry {attempt}"));
                }
                let _ = self
                    .multi
                    .println(format!("layer {}: retrying ({reason})", layer + 1));
            }
        }
    }
}

/// JSON lines on stderr; byte counts are summed and sent at most every 250 ms per layer.
#[derive(Default)]
struct JsonLines {
    pending: Mutex<HashMap<(usize, Phase), (Instant, u64)>>,
}

impl JsonLines {
    fn emit(&self, value: &serde_json::Value) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{value}");
    }
}

impl Progress for JsonLines {
    fn event(&self, event: Event) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        match &event {
            Event::Advance {
                layer,
                phase,
                bytes,
            } => {
                let entry = pending
                    .entry((*layer, *phase))
                    .or_insert_with(|| (Instant::now(), 0));
                entry.1 += bytes;
                if entry.0.elapsed() < Duration::from_millis(250) {
                    return;
                }
                let v = serde_json::json!({
                    "event": "advance", "layer": layer, "phase": phase, "bytes": entry.1
                });
                *entry = (Instant::now(), 0);
                self.emit(&v);
                return;
            }
            Event::Finish { layer, phase, .. } => {
                if let Some((_, n)) = pending.remove(&(*layer, *phase))
                    && n > 0
                {
                    self.emit(&serde_json::json!({
                        "event": "advance", "layer": layer, "phase": phase, "bytes": n
                    }));
                }
            }
            _ => {}
        }
        if let Ok(v) = serde_json::to_value(&event) {
            self.emit(&v);
        }
    }
}
