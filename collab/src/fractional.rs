//! Fractional indexing: positions are strings that sort in list order, and a new position
//! can always be made between two others without touching either, so moving a card never
//! renumbers the rest of the column.
//!
//! A position is a base-62 fraction `0.d1d2d3…` written without the `0.`; digits are
//! `0-9A-Za-z` in ASCII order, and a position never ends in `0` (so there is room below it).

const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE: usize = DIGITS.len();

fn digit(c: u8) -> Option<usize> {
    DIGITS.iter().position(|&d| d == c)
}

/// Whether `key` is a well-formed position.
pub fn is_valid(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 256
        && !key.ends_with('0')
        && key.bytes().all(|b| digit(b).is_some())
}

/// A position strictly between `low` and `high` (`None` = the start / the end of the list).
/// Requires `low < high`, both valid (checked by the caller with [`is_valid`]).
pub fn between(low: Option<&str>, high: Option<&str>) -> String {
    let low: Vec<usize> = low.unwrap_or("").bytes().filter_map(digit).collect();
    let high: Option<Vec<usize>> = high.map(|h| h.bytes().filter_map(digit).collect());
    let digits = midpoint(&low, high.as_deref());
    digits.into_iter().map(|d| DIGITS[d] as char).collect()
}

/// Greenspan's midpoint over digit vectors: `low` is read as padded with zeros.
fn midpoint(low: &[usize], high: Option<&[usize]>) -> Vec<usize> {
    if let Some(high) = high {
        let common = high
            .iter()
            .enumerate()
            .take_while(|&(i, &h)| low.get(i).copied().unwrap_or(0) == h)
            .count();
        if common > 0 {
            let mut out = high[..common].to_vec();
            let rest_low = low.get(common..).unwrap_or(&[]);
            out.extend(midpoint(rest_low, Some(&high[common..])));
            return out;
        }
    }
    let l = low.first().copied().unwrap_or(0);
    let h = high.and_then(|h| h.first().copied()).unwrap_or(BASE);
    if h > l + 1 {
        return vec![(l + h) / 2];
    }
    match high {
        // `high`'s first digit alone is below `high` (which goes on) and above `low`.
        Some(high) if high.len() > 1 => vec![high[0]],
        _ => {
            let mut out = vec![l];
            out.extend(midpoint(low.get(1..).unwrap_or(&[]), None));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn check(low: Option<&str>, high: Option<&str>) -> String {
        let key = between(low, high);
        assert!(is_valid(&key), "{key:?} from {low:?}..{high:?}");
        if let Some(l) = low {
            assert!(l < key.as_str(), "{l} < {key}");
        }
        if let Some(h) = high {
            assert!(key.as_str() < h, "{key} < {h}");
        }
        key
    }

    #[test]
    fn keys_fall_between_their_neighbours() {
        let first = check(None, None);
        let after = check(Some(&first), None);
        let before = check(None, Some(&first));
        check(Some(&before), Some(&first));
        check(Some(&first), Some(&after));
        check(Some("a"), Some("a1"));
        check(Some("a"), Some("b"));
        check(Some("az"), Some("b"));
        check(Some("azzz"), Some("b"));
        check(Some("1"), Some("11"));
        check(None, Some("01"));
        check(None, Some("0001"));
        check(Some("zzz"), None);
        check(Some("y"), Some("z"));
    }

    #[test]
    fn repeated_inserts_at_one_place_stay_ordered() {
        // Always inserting right after the first item (the worst case for key length).
        let mut low = between(None, None);
        let mut high = between(Some(&low), None);
        for _ in 0..500 {
            let mid = check(Some(&low), Some(&high));
            high = mid;
        }
        for _ in 0..500 {
            let mid = check(Some(&low), Some(&high));
            low = mid;
        }
    }

    #[test]
    fn random_inserts_between_random_neighbours() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut keys = vec![between(None, None)];
        for _ in 0..3000 {
            let at = rng.random_range(0..=keys.len());
            let low = at.checked_sub(1).map(|i| keys[i].as_str());
            let high = keys.get(at).map(String::as_str);
            let key = check(low, high);
            keys.insert(at, key);
        }
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
    }
}
