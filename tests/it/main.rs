//! The integration tests, as one test binary (one link of the S3 SDK, s3s and reqwest
//! instead of one per file). Each module starts what it needs: a real embedded S3 server
//! (s3s-fs in a temp dir) and a real gateway on ephemeral ports, spoken to over the network;
//! `common` has the helpers and the fault-injecting proxies and backends.
//!
//! - `objects`: the object API, keys, ranges, conditions.
//! - `failures`: what is left in the bucket after every kind of failure.
//! - `limits`: size, type, rate, shedding, slow clients.
//! - `connections`: HTTP/1.1 and HTTP/2 connections over their life, deadlines, framing.
//! - `identity`: TLS, mTLS, JWTs, CORS.
//! - `links`: signed links and the presigned-URL routes.
//! - `buckets`: several buckets behind one gateway.
//! - `door`: the S3 front door, with aws-sdk-s3 and hand-signed requests; `tools`: the real
//!   S3 tools (aws-cli, boto3, rclone, s5cmd) against it over TLS.
//! - `relay`: the light path against the SDK's, and the S3 connections.
//! - `operations`: metrics, probes, shutdown, the load generator.
//! - `shared`: limits shared by several instances through a real `redis-server`.
//! - `reload`, `cli`, `console`, `audit`: SIGHUP, the binary, the console in Chromium, the
//!   bucket audit.

mod audit;
mod buckets;
mod cli;
mod common;
mod connections;
mod console;
mod door;
mod failures;
mod identity;
mod limits;
mod links;
mod objects;
mod operations;
mod relay;
mod reload;
mod shared;
mod tools;
