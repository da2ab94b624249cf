//! Fuzzes the runtime configuration file: `RuntimeConfig::parse` (JSON or TOML, by the first
//! byte) with its validation, then what a reload does with an accepted file
//! (`auth::Runtime::build`: keys parsed, proxies read). An accepted configuration must survive
//! the trip through JSON that the operator's rendering makes, unchanged.
#![no_main]

use auth_server::auth::Runtime;
use keygate_config::{Format, RuntimeConfig};
use keygate_fuzz::dev_keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if mode % 2 == 0 {
        Format::Json
    } else {
        Format::Toml
    };
    let Ok(config) = RuntimeConfig::parse(text, format) else {
        return;
    };
    let json = serde_json::to_string(&config).unwrap_or_else(|e| panic!("not serializable: {e}"));
    match RuntimeConfig::parse(&json, Format::Json) {
        Ok(again) => assert_eq!(again, config, "changed on the way through JSON"),
        Err(e) => panic!("accepted, but refused as the operator renders it: {e}\n{json}"),
    }
    for tenant in config.tenants.keys() {
        let _ = config.policy_for(tenant);
    }
    let _ = Runtime::build(config, dev_keys());
});
