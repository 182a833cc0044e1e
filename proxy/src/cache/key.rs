//! Cache keys for ids. Up to [`ID_INLINE`] bytes are kept inline, so probing a
//! table compares bytes next to the hash instead of following a pointer to a heap
//! string (a likely cache miss per probe when many keys are cached).

use crate::small::SmallStr;
use quick_cache::Equivalent;
use std::hash::{Hash, Hasher};

/// A tenant id, role or API key prefix as a cache key.
pub type IdKey = SmallStr<ID_INLINE>;

pub const ID_INLINE: usize = 30;

/// A lookup by two borrowed ids without building the owned `(IdKey, IdKey)` key:
/// it hashes and compares like the tuple it stands for.
pub struct PairRef<'a>(pub &'a str, pub &'a str);

impl PairRef<'_> {
    pub fn to_owned_key(&self) -> (IdKey, IdKey) {
        (IdKey::new(self.0), IdKey::new(self.1))
    }
}

impl Hash for PairRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.as_bytes().hash(h);
        self.1.as_bytes().hash(h);
    }
}

impl Equivalent<(IdKey, IdKey)> for PairRef<'_> {
    fn equivalent(&self, key: &(IdKey, IdKey)) -> bool {
        self.0.as_bytes() == key.0.as_bytes() && self.1.as_bytes() == key.1.as_bytes()
    }
}
