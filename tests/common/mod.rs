#![allow(dead_code)]

pub mod mount;
pub mod moto;
pub mod proxy;
