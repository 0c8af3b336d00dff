//! Byte sizes written as Kubernetes quantities (`256Mi`, `1G`, `1048576`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity is not a usable byte size.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a byte size such as 256Mi, 1G or 1048576")]
pub struct QuantityError {
    value: String,
}

/// The regular expression admission uses for byte sizes: a whole number with an optional suffix.
pub const BYTES_PATTERN: &str = "^[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// Converts a byte-size quantity into bytes.
pub fn to_bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    let text = quantity.0.trim();
    let err = || QuantityError {
        value: text.to_owned(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| err())?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return Err(err()),
    };
    number.checked_mul(multiplier).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Result<u64, QuantityError> {
        to_bytes(&Quantity(s.to_owned()))
    }

    #[test]
    fn suffixes() {
        assert_eq!(bytes("256Mi"), Ok(256 << 20));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1048576"), Ok(1_048_576));
        assert_eq!(bytes("2Ki"), Ok(2048));
    }

    #[test]
    fn refuses_fractions_units_and_overflow() {
        for bad in ["", "1.5Gi", "1m", "Mi", "-1", "100000Ei", "1 Mi"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }
}
