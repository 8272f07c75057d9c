#![allow(dead_code)]

pub mod azurite;
pub mod cluster;
pub mod direct;
pub mod fault_proxy;
pub mod gate_proxy;
pub mod gcs;
pub mod inproc;
pub mod moto;
pub mod mount;
pub mod proxy;
pub mod raw;
pub mod tree;
