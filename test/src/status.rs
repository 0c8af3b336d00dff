//! Reading conditions from any object, as JSON.

use serde::Serialize;
use serde_json::Value;

/// Any object as JSON (`Value::Null` if it does not serialize).
pub fn to_json<T: Serialize>(obj: &T) -> Value {
    serde_json::to_value(obj).unwrap_or(Value::Null)
}

/// The condition of `type_` in `status.conditions`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The `status` (`"True"`, `"False"`, `"Unknown"`) of the condition `type_`.
pub fn condition_status(obj: &Value, type_: &str) -> Option<String> {
    condition(obj, type_)?["status"].as_str().map(str::to_owned)
}

/// The `reason` of the condition `type_`.
pub fn condition_reason(obj: &Value, type_: &str) -> Option<String> {
    condition(obj, type_)?["reason"].as_str().map(str::to_owned)
}

/// The `message` of the condition `type_`.
pub fn condition_message(obj: &Value, type_: &str) -> Option<String> {
    condition(obj, type_)?["message"]
        .as_str()
        .map(str::to_owned)
}

/// Whether the condition `type_` has `status` and, if given, `reason`.
pub fn has_condition(obj: &Value, type_: &str, status: &str, reason: Option<&str>) -> bool {
    condition_status(obj, type_).as_deref() == Some(status)
        && reason.is_none_or(|r| condition_reason(obj, type_).as_deref() == Some(r))
}

/// Whether `status.observedGeneration` equals `metadata.generation`.
pub fn observed_current(obj: &Value) -> bool {
    let generation = obj["metadata"]["generation"].as_i64();
    generation.is_some() && obj["status"]["observedGeneration"].as_i64() == generation
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_conditions() {
        let obj = json!({
            "metadata": {"generation": 2},
            "status": {"observedGeneration": 2, "conditions": [
                {"type": "Ready", "status": "False", "reason": "HTTPStatus", "message": "HTTP 500"},
                {"type": "Verified", "status": "True", "reason": "Verified"}
            ]}
        });
        assert_eq!(condition_status(&obj, "Ready").as_deref(), Some("False"));
        assert_eq!(
            condition_reason(&obj, "Ready").as_deref(),
            Some("HTTPStatus")
        );
        assert!(has_condition(&obj, "Verified", "True", None));
        assert!(!has_condition(&obj, "Ready", "False", Some("FetchFailed")));
        assert_eq!(condition_status(&obj, "Paused"), None);
        assert!(observed_current(&obj));
    }
}
