//! Watch predicates: which changes of an object are worth a reconcile.

use std::hash::{DefaultHasher, Hash, Hasher};

use kube::Resource;

/// Changes of the spec (generation), of the finalizers, and the start of deletion. Status-only
/// writes (ours included) pass none of these, so a controller never wakes on its own writes;
/// the finalizer and deletion parts let the `finalizer` helper see the finalizer it added and
/// the deletion it must clean up after.
pub fn generation_or_deletion<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}
