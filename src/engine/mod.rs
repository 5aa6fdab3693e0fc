//! The translation layer: the only module that talks to `paho-mqtt`.

mod properties;
