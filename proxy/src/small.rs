//! Short strings kept inline: a table entry or a cache value that holds its text
//! in place is read without following a pointer (with 100k API keys cached, every
//! pointer followed is a likely cache miss).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Text of up to `N` bytes stored inline, longer text on the heap.
#[derive(Clone)]
pub enum SmallStr<const N: usize> {
    Inline(u8, [u8; N]),
    Heap(Box<str>),
}

impl<const N: usize> SmallStr<N> {
    pub fn new(s: &str) -> Self {
        let b = s.as_bytes();
        match u8::try_from(b.len()) {
            Ok(n) if b.len() <= N => {
                let mut buf = [0u8; N];
                buf[..b.len()].copy_from_slice(b);
                SmallStr::Inline(n, buf)
            }
            _ => SmallStr::Heap(s.into()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SmallStr::Inline(n, buf) => buf.get(..usize::from(*n)).unwrap_or_default(),
            SmallStr::Heap(s) => s.as_bytes(),
        }
    }

    /// The text (made from a `&str`, so the check never fails; ASCII ids check in a
    /// few nanoseconds).
    pub fn as_str(&self) -> &str {
        match self {
            SmallStr::Inline(..) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            SmallStr::Heap(s) => s,
        }
    }

    pub fn to_text(&self) -> String {
        self.as_str().to_owned()
    }
}

impl<const N: usize> PartialEq for SmallStr<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for SmallStr<N> {}

/// Hashes like the `[u8]` it holds, so maps keyed by it can be probed with
/// `id.as_bytes()` (see the `Borrow` below).
impl<const N: usize> Hash for SmallStr<N> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h);
    }
}

impl<const N: usize> Borrow<[u8]> for SmallStr<N> {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<const N: usize> std::fmt::Debug for SmallStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_text_is_inline_long_text_on_the_heap_and_both_read_back() {
        let short = SmallStr::<8>::new("acme");
        assert!(matches!(short, SmallStr::Inline(4, _)));
        assert_eq!(short.as_str(), "acme");
        let exact = SmallStr::<8>::new("12345678");
        assert!(matches!(exact, SmallStr::Inline(8, _)));
        let long = SmallStr::<8>::new("123456789");
        assert!(matches!(long, SmallStr::Heap(_)));
        assert_eq!(long.as_str(), "123456789");
        let utf8 = SmallStr::<8>::new("sub-ü");
        assert_eq!(utf8.as_str(), "sub-ü");
        assert_eq!(SmallStr::<8>::new("").as_str(), "");
        // Inline and heap forms of the same text are equal.
        assert_eq!(
            SmallStr::<4>::new("abcdef"),
            SmallStr::<4>::Heap("abcdef".into())
        );
    }

    #[test]
    fn maps_keyed_by_small_strings_are_probed_with_bytes() {
        let mut m: HashMap<SmallStr<8>, u32> = HashMap::new();
        m.insert(SmallStr::new("acme"), 1);
        m.insert(SmallStr::new("a-much-longer-tenant"), 2);
        assert_eq!(m.get("acme".as_bytes()), Some(&1));
        assert_eq!(m.get("a-much-longer-tenant".as_bytes()), Some(&2));
        assert_eq!(m.get("acm".as_bytes()), None);
    }
}
