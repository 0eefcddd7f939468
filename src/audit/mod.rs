//! The bucket audit (SPEC section 9): is the bucket reachable, private and protected?
//! Run at start (`backend.audit`) and by `portcullis audit`. A check the backend does not
//! implement is `unknown`, never `fail`; `enforce` refuses to start only on a bucket that is
//! (or may be made) public: Block Public Access not fully on, or a public bucket policy.

use serde::Serialize;

use crate::config::AuditMode;
use crate::relay::{Answer, Backend, Posture};

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pass,
    Fail,
    Unknown,
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub state: State,
    /// What was seen.
    pub detail: String,
    pub why: &'static str,
    pub fix: &'static str,
    /// A failure that makes the bucket public (refused by `enforce`).
    #[serde(skip)]
    pub exposes: bool,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub bucket: String,
    pub checks: Vec<Check>,
}

/// Reads the bucket's settings and judges them.
pub async fn run(backend: &Backend) -> Report {
    judge(backend.bucket(), &backend.posture().await)
}

/// The judgement, separate from the calls so it can be tested on its own.
pub fn judge(bucket: &str, p: &Posture) -> Report {
    let mut checks = Vec::new();
    let mut push = |check, state, detail: String, why, fix, exposes| {
        checks.push(Check {
            check,
            state,
            detail,
            why,
            fix,
            exposes,
        })
    };
    let (state, detail) = match &p.reachable {
        Answer::Value(()) => (State::Pass, "HeadBucket answered".into()),
        Answer::Unsupported => (State::Unknown, "HeadBucket is not implemented".into()),
        Answer::Missing => (State::Fail, "no such bucket".into()),
        Answer::Failed(d) => (State::Fail, d.clone()),
    };
    push(
        "reachable",
        state,
        detail,
        "every request fails while the gateway cannot reach the bucket",
        "check backend.bucket, region, endpoint and the credentials' s3:ListBucket",
        false,
    );
    let (state, detail) = match &p.public_access_block {
        Answer::Value(flags) if flags.iter().all(|f| *f) => {
            (State::Pass, "all four settings on".into())
        }
        Answer::Value(flags) => (State::Fail, format!("not all on: {flags:?}")),
        Answer::Missing => (State::Fail, "no Block Public Access configuration".into()),
        other => unknown(other),
    };
    push(
        "block_public_access",
        state,
        detail,
        "without it one ACL or policy change can publish every object",
        "aws s3api put-public-access-block --public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true --bucket BUCKET",
        true,
    );
    let (state, detail) = match &p.policy_is_public {
        Answer::Value(false) => (State::Pass, "the bucket policy is not public".into()),
        Answer::Value(true) => (
            State::Fail,
            "the bucket policy makes the bucket public".into(),
        ),
        Answer::Missing => (State::Pass, "no bucket policy".into()),
        other => unknown(other),
    };
    push(
        "policy_not_public",
        state,
        detail,
        "a public policy serves objects to anyone, around the gateway",
        "remove the statements granting Principal \"*\" from the bucket policy",
        true,
    );
    let (state, detail) = match &p.encryption {
        Answer::Value(algs) if !algs.is_empty() => (State::Pass, algs.join(", ")),
        Answer::Value(_) | Answer::Missing => (State::Fail, "no default encryption".into()),
        other => unknown(other),
    };
    push(
        "default_encryption",
        state,
        detail,
        "objects written by anything but the gateway would be stored unencrypted",
        "aws s3api put-bucket-encryption --bucket BUCKET --server-side-encryption-configuration '{\"Rules\":[{\"ApplyServerSideEncryptionByDefault\":{\"SSEAlgorithm\":\"AES256\"}}]}'",
        false,
    );
    let (state, detail) = match &p.versioning {
        Answer::Value(Some(s)) if s == "Enabled" => (State::Pass, "Enabled".into()),
        Answer::Value(s) => (
            State::Fail,
            s.clone().unwrap_or_else(|| "never enabled".into()),
        ),
        Answer::Missing => (State::Fail, "never enabled".into()),
        other => unknown(other),
    };
    push(
        "versioning",
        state,
        detail,
        "an overwrite or delete through the gateway cannot be undone without it",
        "aws s3api put-bucket-versioning --bucket BUCKET --versioning-configuration Status=Enabled",
        false,
    );
    let (state, detail) = match &p.cors_origins {
        Answer::Value(origins) if origins.iter().any(|o| o == "*") => {
            (State::Fail, "a CORS rule allows every origin".into())
        }
        Answer::Value(origins) if origins.is_empty() => (State::Pass, "no CORS rules".into()),
        Answer::Value(origins) => (State::Pass, origins.join(", ")),
        Answer::Missing => (State::Pass, "no CORS configuration".into()),
        other => unknown(other),
    };
    push(
        "cors_not_wildcard",
        state,
        detail,
        "browsers should reach objects through the gateway, not straight from any site",
        "remove AllowedOrigins \"*\" from the bucket's CORS rules (the gateway has its own [cors])",
        false,
    );
    Report {
        bucket: bucket.to_owned(),
        checks,
    }
}

fn unknown<T>(answer: &Answer<T>) -> (State, String) {
    match answer {
        Answer::Unsupported => (
            State::Unknown,
            "the backend does not implement this call".into(),
        ),
        Answer::Failed(d) => (State::Unknown, format!("could not read it: {d}")),
        _ => (State::Unknown, String::new()),
    }
}

impl Report {
    /// Did any check fail?
    pub fn any_failed(&self) -> bool {
        self.checks.iter().any(|c| c.state == State::Fail)
    }

    /// The failures that make the bucket public.
    pub fn exposures(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.exposes && c.state == State::Fail)
            .collect()
    }

    /// A table for people: check, state, what was seen, why it matters, how to fix it.
    pub fn table(&self) -> String {
        let mut out = format!("Bucket audit of {}\n\n", self.bucket);
        out.push_str(&format!("{:<22} {:<8} {}\n", "CHECK", "STATE", "SEEN"));
        for c in &self.checks {
            let state = match c.state {
                State::Pass => "pass",
                State::Fail => "FAIL",
                State::Unknown => "unknown",
            };
            out.push_str(&format!("{:<22} {:<8} {}\n", c.check, state, c.detail));
            if c.state != State::Pass {
                out.push_str(&format!("{:<31} why: {}\n", "", c.why));
                out.push_str(&format!(
                    "{:<31} fix: {}\n",
                    "",
                    c.fix.replace("BUCKET", &self.bucket)
                ));
            }
        }
        out
    }

    /// What `backend.audit` asks for at start: `Err` (refuse to start) only for `enforce`
    /// on a bucket that is or may be made public.
    pub fn enforce(&self, mode: AuditMode) -> Result<(), String> {
        let exposed = self.exposures();
        if mode == AuditMode::Enforce && !exposed.is_empty() {
            let names: Vec<&str> = exposed.iter().map(|c| c.check).collect();
            return Err(format!(
                "backend.audit = \"enforce\": the bucket {} is or may be made public ({}); refusing to start",
                self.bucket,
                names.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posture() -> Posture {
        Posture {
            reachable: Answer::Value(()),
            public_access_block: Answer::Value([true; 4]),
            policy_is_public: Answer::Missing,
            encryption: Answer::Value(vec!["AES256".into()]),
            versioning: Answer::Value(Some("Enabled".into())),
            cors_origins: Answer::Missing,
        }
    }

    #[test]
    fn a_locked_down_bucket_passes() {
        let r = judge("b", &posture());
        assert!(
            r.checks.iter().all(|c| c.state == State::Pass),
            "{}",
            r.table()
        );
        assert!(r.enforce(AuditMode::Enforce).is_ok());
    }

    #[test]
    fn public_buckets_are_refused_by_enforce_only() {
        let mut p = posture();
        p.public_access_block = Answer::Value([true, true, false, true]);
        let r = judge("b", &p);
        assert!(r.any_failed());
        assert!(r.enforce(AuditMode::Enforce).is_err());
        assert!(r.enforce(AuditMode::Warn).is_ok());

        let mut p = posture();
        p.policy_is_public = Answer::Value(true);
        assert!(judge("b", &p).enforce(AuditMode::Enforce).is_err());

        // Other failures are warnings even under enforce.
        let mut p = posture();
        p.versioning = Answer::Value(None);
        p.cors_origins = Answer::Value(vec!["*".into()]);
        let r = judge("b", &p);
        assert!(r.any_failed());
        assert!(r.enforce(AuditMode::Enforce).is_ok());
    }

    #[test]
    fn unsupported_calls_are_unknown_not_failed() {
        let p = Posture {
            reachable: Answer::Value(()),
            public_access_block: Answer::Unsupported,
            policy_is_public: Answer::Unsupported,
            encryption: Answer::Unsupported,
            versioning: Answer::Unsupported,
            cors_origins: Answer::Unsupported,
        };
        let r = judge("b", &p);
        assert!(!r.any_failed());
        assert_eq!(
            r.checks
                .iter()
                .filter(|c| c.state == State::Unknown)
                .count(),
            5
        );
        assert!(r.enforce(AuditMode::Enforce).is_ok());
    }
}
