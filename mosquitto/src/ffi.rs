//! The part of Mosquitto 2.0's plugin interface this plugin uses, declared by hand from
//! `mosquitto_broker.h`, `mosquitto_plugin.h` and `mosquitto.h` (Debian's `mosquitto-dev` 2.0.11).
//! The broker executable defines these functions; the plugin finds them when Mosquitto loads it.

use std::ffi::{c_char, c_int, c_void};

/// Opaque: a client's connection or session.
#[repr(C)]
pub struct Mosquitto {
    _private: [u8; 0],
}

/// Opaque: the handle Mosquitto gives `mosquitto_plugin_init`.
#[repr(C)]
pub struct PluginId {
    _private: [u8; 0],
}

/// Opaque: an MQTT 5 property list (`mosquitto_property`).
#[repr(C)]
pub struct Property {
    _private: [u8; 0],
}

/// `struct mosquitto_opt`: one `plugin_opt_KEY value` line.
#[repr(C)]
pub struct Opt {
    pub key: *mut c_char,
    pub value: *mut c_char,
}

pub const PLUGIN_VERSION: c_int = 5;

pub const MOSQ_ERR_SUCCESS: c_int = 0;
pub const MOSQ_ERR_INVAL: c_int = 3;
pub const MOSQ_ERR_ACL_DENIED: c_int = 12;
pub const MOSQ_ERR_UNKNOWN: c_int = 13;
pub const MOSQ_ERR_PLUGIN_DEFER: c_int = 17;

pub const MOSQ_EVT_ACL_CHECK: c_int = 2;
pub const MOSQ_EVT_MESSAGE: c_int = 7;
pub const MOSQ_EVT_TICK: c_int = 9;
pub const MOSQ_EVT_DISCONNECT: c_int = 10;

pub const MOSQ_ACL_READ: c_int = 0x01;
pub const MOSQ_ACL_SUBSCRIBE: c_int = 0x04;
pub const MOSQ_ACL_UNSUBSCRIBE: c_int = 0x08;

pub const MOSQ_LOG_INFO: c_int = 1 << 0;
pub const MOSQ_LOG_WARNING: c_int = 1 << 2;
pub const MOSQ_LOG_ERR: c_int = 1 << 3;
pub const MOSQ_LOG_DEBUG: c_int = 1 << 4;

/// `struct mosquitto_evt_acl_check`.
#[repr(C)]
pub struct EvtAclCheck {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub topic: *const c_char,
    pub payload: *const c_void,
    pub properties: *mut Property,
    pub access: c_int,
    pub payloadlen: u32,
    pub qos: u8,
    pub retain: bool,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_message`.
#[repr(C)]
pub struct EvtMessage {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub topic: *mut c_char,
    pub payload: *mut c_void,
    pub properties: *mut Property,
    pub reason_string: *mut c_char,
    pub payloadlen: u32,
    pub qos: u8,
    pub reason_code: u8,
    pub retain: bool,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_disconnect`.
#[repr(C)]
pub struct EvtDisconnect {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub reason: c_int,
    pub future2: [*mut c_void; 4],
}

/// `MOSQ_FUNC_generic_callback`: `(event, event_data, userdata)`.
pub type Callback = unsafe extern "C" fn(c_int, *mut c_void, *mut c_void) -> c_int;

extern "C" {
    pub fn mosquitto_callback_register(
        identifier: *mut PluginId,
        event: c_int,
        cb_func: Callback,
        event_data: *const c_void,
        userdata: *mut c_void,
    ) -> c_int;
    pub fn mosquitto_callback_unregister(
        identifier: *mut PluginId,
        event: c_int,
        cb_func: Callback,
        event_data: *const c_void,
    ) -> c_int;
    /// Queues a message for one client (`clientid`), copying payload and strings. NOT thread-safe:
    /// only from the broker thread.
    pub fn mosquitto_broker_publish_copy(
        clientid: *const c_char,
        topic: *const c_char,
        payloadlen: c_int,
        payload: *const c_void,
        qos: c_int,
        retain: bool,
        properties: *mut Property,
    ) -> c_int;
    /// printf-style; this plugin always passes `"%s"` and one string. Broker thread only (it may
    /// publish the line on `$SYS/broker/log/...`).
    pub fn mosquitto_log_printf(level: c_int, fmt: *const c_char, ...);
    pub fn mosquitto_client_id(client: *const Mosquitto) -> *const c_char;
    pub fn mosquitto_client_clean_session(client: *const Mosquitto) -> bool;
}
