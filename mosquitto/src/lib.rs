//! mqtt-offline-messages as a Mosquitto 2.0 plugin (plugin API version 5).
//!
//! ```text
//! plugin /path/to/libmqtt_offline_messages_mosquitto.so
//! plugin_opt_config /path/to/config.hocon
//! ```
//!
//! This file is the C boundary: the functions Mosquitto calls, each converting its arguments and
//! catching any panic (none may unwind into C). [`host`] does the work.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

mod ffi;
mod gate;
mod host;
mod log;
mod setup;

use host::Host;

/// The callbacks registered, each for its event.
const CALLBACKS: [(c_int, ffi::Callback); 4] = [
    (ffi::MOSQ_EVT_MESSAGE, on_message),
    (ffi::MOSQ_EVT_ACL_CHECK, on_acl_check),
    (ffi::MOSQ_EVT_DISCONNECT, on_disconnect),
    (ffi::MOSQ_EVT_TICK, on_tick),
];

/// Runs `f`, or returns `fallback` if it panics: a panic must not unwind into Mosquitto.
fn guard(fallback: c_int, f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("the plugin panicked in a Mosquitto callback (a bug: please report it)");
        fallback
    })
}

/// Mosquitto asks which plugin API this plugin speaks: version 5 (Mosquitto 2.0).
#[no_mangle]
pub extern "C" fn mosquitto_plugin_version(_count: c_int, _versions: *const c_int) -> c_int {
    ffi::PLUGIN_VERSION
}

/// Reads `plugin_opt_config`, checks it, starts the engine and registers the callbacks. On an
/// error Mosquitto logs our one-line reason and stops.
///
/// # Safety
/// Called by Mosquitto, on its broker thread, with the pointers its plugin API documents.
#[no_mangle]
pub unsafe extern "C" fn mosquitto_plugin_init(
    identifier: *mut ffi::PluginId,
    userdata: *mut *mut c_void,
    options: *mut ffi::Opt,
    option_count: c_int,
) -> c_int {
    guard(ffi::MOSQ_ERR_UNKNOWN, || {
        // SAFETY: Mosquitto passes `option_count` options, each key and value a C string, alive
        // for this call (they live until cleanup).
        let options = unsafe { options_of(options, option_count) };
        let rc = match start(&options) {
            Ok(host) => register(identifier, userdata, host),
            Err(e) => {
                log::print(ffi::MOSQ_LOG_ERR, &e.to_string());
                ffi::MOSQ_ERR_INVAL
            }
        };
        log::drain();
        rc
    })
}

fn start(options: &[(String, String)]) -> Result<Host, setup::SetupError> {
    setup::check_mosquitto_conf()?;
    let path = setup::config_path(options)?;
    let config = setup::load(&path)?;
    log::install(config.log.level.as_deref());
    let host = Host::start(config)?;
    tracing::info!(config = %path.display(), "offline-messages plugin loaded");
    Ok(host)
}

/// Hands `host` to Mosquitto as the callbacks' userdata.
fn register(identifier: *mut ffi::PluginId, userdata: *mut *mut c_void, host: Host) -> c_int {
    let host = Box::into_raw(Box::new(host)).cast::<c_void>();
    for (i, (event, callback)) in CALLBACKS.iter().enumerate() {
        // SAFETY: `identifier` is the one Mosquitto passed to init; `host` stays valid until
        // cleanup, which unregisters every callback before freeing it.
        let rc = unsafe { ffi::mosquitto_callback_register(identifier, *event, *callback, std::ptr::null(), host) };
        if rc != ffi::MOSQ_ERR_SUCCESS {
            log::print(ffi::MOSQ_LOG_ERR, &format!("registering the callback for event {event} failed ({rc})"));
            // SAFETY: as above; only the callbacks registered so far are unregistered.
            unsafe { unregister(identifier, i) };
            // SAFETY: `host` came from Box::into_raw above and no callback holds it any more.
            unsafe { Box::from_raw(host.cast::<Host>()) }.shutdown();
            return rc;
        }
    }
    // SAFETY: Mosquitto passes a valid pointer to its userdata slot; it gives the value back to
    // cleanup.
    unsafe { *userdata = host };
    IDENTIFIER.with(|id| id.set(identifier));
    ffi::MOSQ_ERR_SUCCESS
}

thread_local! {
    /// The identifier from init, for unregistering at cleanup (on the same broker thread).
    static IDENTIFIER: std::cell::Cell<*mut ffi::PluginId> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Unregisters the first `count` callbacks.
///
/// # Safety
/// `identifier` is the one given to init.
unsafe fn unregister(identifier: *mut ffi::PluginId, count: usize) {
    for (event, callback) in CALLBACKS.iter().take(count) {
        // SAFETY: per this function's contract; unregistering an unregistered callback is an error
        // Mosquitto reports, not undefined behaviour.
        unsafe { ffi::mosquitto_callback_unregister(identifier, *event, *callback, std::ptr::null()) };
    }
}

/// Unregisters the callbacks, makes what the engine holds durable, and joins its threads.
///
/// # Safety
/// Called by Mosquitto on its broker thread with the userdata init stored.
#[no_mangle]
pub unsafe extern "C" fn mosquitto_plugin_cleanup(
    userdata: *mut c_void,
    _options: *mut ffi::Opt,
    _option_count: c_int,
) -> c_int {
    guard(ffi::MOSQ_ERR_UNKNOWN, || {
        if userdata.is_null() {
            return ffi::MOSQ_ERR_SUCCESS;
        }
        let identifier = IDENTIFIER.with(|id| id.replace(std::ptr::null_mut()));
        if !identifier.is_null() {
            // SAFETY: the identifier init registered with, on the same thread.
            unsafe { unregister(identifier, CALLBACKS.len()) };
        }
        // SAFETY: `userdata` is the Box init leaked; no callback can reach it any more.
        let host = unsafe { Box::from_raw(userdata.cast::<Host>()) };
        host.shutdown();
        tracing::info!("offline-messages plugin stopped");
        log::drain();
        ffi::MOSQ_ERR_SUCCESS
    })
}

/// The options as owned strings.
///
/// # Safety
/// `options` points to `count` valid `mosquitto_opt`s (or is null with `count` 0).
unsafe fn options_of(options: *mut ffi::Opt, count: c_int) -> Vec<(String, String)> {
    if options.is_null() || count <= 0 {
        return Vec::new();
    }
    // SAFETY: per this function's contract.
    let options = unsafe { std::slice::from_raw_parts(options, count as usize) };
    // SAFETY: Mosquitto's option keys and values are C strings.
    options.iter().map(|o| unsafe { (text(o.key), text(o.value)) }).collect()
}

/// A C string as text (empty for null).
///
/// # Safety
/// `s` is null or a valid NUL-terminated string.
unsafe fn text(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// The callbacks' userdata.
///
/// # Safety
/// `userdata` is the pointer `register` gave Mosquitto, valid until cleanup unregisters us.
unsafe fn host<'a>(userdata: *mut c_void) -> &'a Host {
    // SAFETY: per this function's contract; shared references only (see `Host`).
    unsafe { &*userdata.cast::<Host>() }
}

/// A client's id (empty before it has one).
///
/// # Safety
/// `client` is a client Mosquitto passed to this callback.
unsafe fn client_id(client: *const ffi::Mosquitto) -> String {
    // SAFETY: `client` is valid for the callback; the id is a C string Mosquitto owns, or null.
    unsafe { text(ffi::mosquitto_client_id(client)) }
}

unsafe extern "C" fn on_message(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    // A panic must not refuse the publish: the message is then only not stored (logged).
    guard(ffi::MOSQ_ERR_SUCCESS, || {
        // SAFETY: for MOSQ_EVT_MESSAGE, `data` is a `mosquitto_evt_message` valid for the call.
        let m = unsafe { &*data.cast::<ffi::EvtMessage>() };
        // SAFETY: the topic is a C string, the payload `payloadlen` bytes (or null when empty),
        // both valid for the call and copied before it returns.
        let (topic, payload) = unsafe {
            let payload = if m.payload.is_null() || m.payloadlen == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(m.payload.cast::<u8>(), m.payloadlen as usize)
            };
            (text(m.topic), payload)
        };
        // SAFETY: userdata and client as registered and passed by Mosquitto.
        let (host, from) = unsafe { (host(userdata), client_id(m.client)) };
        host.on_message(&from, &topic, payload, m.qos, m.retain);
        ffi::MOSQ_ERR_SUCCESS
    })
}

/// Decides nothing (DEFER): authorization stays with Mosquitto's ACL and other plugins. A
/// subscribe or unsubscribe is what this plugin learns from it; a read check it refuses only for a
/// live message a running replay delivers itself (see `gate`).
unsafe extern "C" fn on_acl_check(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard(ffi::MOSQ_ERR_PLUGIN_DEFER, || {
        // SAFETY: for MOSQ_EVT_ACL_CHECK, `data` is a `mosquitto_evt_acl_check` valid for the call.
        let check = unsafe { &*data.cast::<ffi::EvtAclCheck>() };
        if check.access == ffi::MOSQ_ACL_READ {
            // SAFETY: userdata as registered.
            if !unsafe { host(userdata) }.replaying() {
                return ffi::MOSQ_ERR_PLUGIN_DEFER;
            }
            // SAFETY: userdata as registered; the topic is a C string and the client valid for the call.
            let (host, topic) = unsafe { (host(userdata), text(check.topic)) };
            // SAFETY: as above; the closure runs within this call.
            let client = || unsafe { client_id(check.client) };
            return if host.refuses_live(client, &topic, check.qos, check.retain) {
                ffi::MOSQ_ERR_ACL_DENIED
            } else {
                ffi::MOSQ_ERR_PLUGIN_DEFER
            };
        }
        if check.access != ffi::MOSQ_ACL_SUBSCRIBE && check.access != ffi::MOSQ_ACL_UNSUBSCRIBE {
            return ffi::MOSQ_ERR_PLUGIN_DEFER;
        }
        // SAFETY: the topic (the filter) is a C string valid for the call; userdata and client as
        // registered and passed by Mosquitto.
        let (host, client, filter) = unsafe { (host(userdata), client_id(check.client), text(check.topic)) };
        if check.access == ffi::MOSQ_ACL_SUBSCRIBE {
            host.on_subscribe(&client, &filter, check.qos);
        } else {
            host.on_unsubscribe(&client, &filter);
        }
        ffi::MOSQ_ERR_PLUGIN_DEFER
    })
}

unsafe extern "C" fn on_disconnect(_event: c_int, data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard(ffi::MOSQ_ERR_SUCCESS, || {
        // SAFETY: for MOSQ_EVT_DISCONNECT, `data` is a `mosquitto_evt_disconnect` valid for the call.
        let d = unsafe { &*data.cast::<ffi::EvtDisconnect>() };
        // SAFETY: the client is valid for the call; userdata as registered.
        let (host, client, clean) =
            unsafe { (host(userdata), client_id(d.client), ffi::mosquitto_client_clean_session(d.client)) };
        if !client.is_empty() {
            host.on_disconnect(&client, clean);
        }
        ffi::MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn on_tick(_event: c_int, _data: *mut c_void, userdata: *mut c_void) -> c_int {
    guard(ffi::MOSQ_ERR_SUCCESS, || {
        // SAFETY: userdata as registered.
        unsafe { host(userdata) }.on_tick();
        log::drain();
        ffi::MOSQ_ERR_SUCCESS
    })
}
