#![allow(dead_code)]

pub mod moto;
pub mod mount;
pub mod proxy;
