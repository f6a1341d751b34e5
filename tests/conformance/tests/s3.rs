//! The conformance suite against the `s3://` backend, on two real servers: moto and SeaweedFS.
//! Their URLs come from `IMAGESTORE_TEST_S3_MOTO` and `IMAGESTORE_TEST_S3_SEAWEED`, set by
//! `cargo xtask conformance s3` (which starts both); under `CI=true` a missing one fails.

mod common;

mod moto {
    use imagestore_conformance::{Ctx, conformance_tests};

    async fn ctx() -> Option<Ctx> {
        let url = super::common::test_url("IMAGESTORE_TEST_S3_MOTO", &[("lease_ttl", "5s")])?;
        Some(super::common::ctx(url).await)
    }

    conformance_tests!(ctx);
}

mod seaweed {
    use imagestore_conformance::{Ctx, conformance_tests};

    async fn ctx() -> Option<Ctx> {
        let url = super::common::test_url("IMAGESTORE_TEST_S3_SEAWEED", &[("lease_ttl", "10s")])?;
        Some(super::common::ctx(url).await)
    }

    conformance_tests!(ctx);
}
