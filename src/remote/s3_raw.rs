//! Placeholder until the raw S3 module lands.
#![allow(dead_code, unused_variables)]
use super::error::{RemoteError, RemoteResult};
use std::collections::HashMap;

pub struct S3Raw;
#[derive(Debug, Clone)]
pub struct RawObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}
#[derive(Debug, Clone)]
pub struct RawHead {
    pub size: u64,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub metadata: HashMap<String, String>,
}
impl S3Raw {
    pub fn new(
        endpoint: Option<String>,
        bucket: String,
        region: String,
        virtual_hosted: bool,
        credentials: object_store::aws::AwsCredentialProvider,
    ) -> Self {
        S3Raw
    }
    pub async fn list(&self, prefix: &str) -> RemoteResult<Vec<RawObject>> {
        Err(RemoteError::Permanent("todo".into()))
    }
    pub async fn head(&self, key: &str) -> RemoteResult<Option<RawHead>> {
        Err(RemoteError::Permanent("todo".into()))
    }
    pub async fn put_empty(
        &self,
        key: &str,
        metadata: &[(String, String)],
    ) -> RemoteResult<Option<String>> {
        Err(RemoteError::Permanent("todo".into()))
    }
    pub async fn delete(&self, key: &str) -> RemoteResult<()> {
        Err(RemoteError::Permanent("todo".into()))
    }
}
