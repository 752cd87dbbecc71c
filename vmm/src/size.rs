//! Byte sizes as users write them: `256M`, `2G`, `1536MiB`, `4096`. Shared
//! by `--memory` and the shares' `cache-size=`, so it sits below both.

/// Why a size did not parse. Each message names the text the user gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{0}' is not a size (examples: 256M, 2G)")]
    NotASize(String),
    #[error("'{text}': unknown size suffix '{suffix}' (use K, M, G or T)")]
    UnknownSuffix { text: String, suffix: String },
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Parses `256M`, `2G`, `1048576`, ... into bytes (suffixes K, M, G, T in
/// powers of 1024, with or without `B`/`iB`; bytes if none).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeError::NotASize(s.to_string()))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(SizeError::UnknownSuffix {
                text: s.to_string(),
                suffix: suffix.to_string(),
            })
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| SizeError::TooLarge(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1536MiB"), Ok(1536 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 1K "), Ok(1024));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(
            parse_size("banana"),
            Err(SizeError::NotASize("banana".into()))
        );
        assert_eq!(parse_size(""), Err(SizeError::NotASize("".into())));
        assert_eq!(parse_size("-1G"), Err(SizeError::NotASize("-1G".into())));
        assert_eq!(
            parse_size("12Q"),
            Err(SizeError::UnknownSuffix {
                text: "12Q".into(),
                suffix: "Q".into()
            })
        );
        assert_eq!(
            parse_size("99999999999T"),
            Err(SizeError::TooLarge("99999999999T".into()))
        );
        // The texts users see (and tests match) are the ones from before
        // the errors were typed.
        assert_eq!(
            parse_size("12Q").unwrap_err().to_string(),
            "'12Q': unknown size suffix 'Q' (use K, M, G or T)"
        );
        assert_eq!(
            parse_size("x").unwrap_err().to_string(),
            "'x' is not a size (examples: 256M, 2G)"
        );
    }
}
