//! [`PreparedMaps`]: the maps of one projector, prepared lazily for each backend that projects
//! with them, so that a caller pairing projectors and backends per call (the C ABI, the Python
//! bindings) prepares each map once per backend instead of once per call.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::{Backend, BackendId, InputKind, OutputForm, PreparedMap};
use crate::align::{Modality, ModalityMaps};
use crate::error::Result;

/// The prepared maps of one projector, per backend and per (modality, input kind, form).
///
/// Thread-safe: any number of threads may call [`PreparedMaps::get`] at once; the first call for
/// a map prepares it (the others wait for it), later calls share it. A failed preparation is not
/// remembered: the next call tries again. The cache holds a backend only weakly: maps prepared
/// for a backend that was dropped are released at the next call (or with the cache).
#[derive(Default)]
pub struct PreparedMaps {
    per_backend: Mutex<Vec<BackendMaps>>,
}

struct BackendMaps {
    id: BackendId,
    backend: Weak<dyn Backend>,
    slots: Arc<Slots>,
}

#[derive(Default)]
struct Slots {
    maps: [OnceLock<Arc<PreparedMap>>; 8],
    /// Held while one of `maps` is being prepared, so that each is prepared once.
    preparing: Mutex<()>,
}

impl PreparedMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// The map of `maps` for `kind` rows into `form`, prepared for `backend`. Every `maps` given
    /// to one cache must come from the same projector (the cache is keyed by modality, not by
    /// weights). Errors: the embedding route where it is not exact (`Error::InvalidArgument`
    /// with the reason), and whatever [`Backend::prepare`] returns.
    pub fn get(
        &self,
        backend: &Arc<dyn Backend>,
        maps: &ModalityMaps,
        kind: InputKind,
        form: OutputForm,
    ) -> Result<Arc<PreparedMap>> {
        let map = maps.select(kind, form)?;
        let slots = self.slots_for(backend);
        let slot = &slots.maps[(maps.modality == Modality::Text) as usize * 4
            + (kind == InputKind::Embeddings) as usize * 2
            + (form == OutputForm::Full) as usize];
        if let Some(p) = slot.get() {
            return Ok(p.clone());
        }
        let _preparing = slots.preparing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = slot.get() {
            return Ok(p.clone());
        }
        let prepared = Arc::new(backend.prepare(map)?);
        Ok(slot.get_or_init(|| prepared).clone())
    }

    /// The slots of `backend`, made on first use; entries of dropped backends are removed.
    fn slots_for(&self, backend: &Arc<dyn Backend>) -> Arc<Slots> {
        let id = backend.id();
        let mut all = self.per_backend.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|e| e.backend.strong_count() > 0);
        if let Some(e) = all.iter().find(|e| e.id == id) {
            return e.slots.clone();
        }
        let slots = Arc::new(Slots::default());
        all.push(BackendMaps {
            id,
            backend: Arc::downgrade(backend),
            slots: slots.clone(),
        });
        slots
    }

    /// How many backends currently have maps here (for tests).
    pub fn backends(&self) -> usize {
        let mut all = self.per_backend.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|e| e.backend.strong_count() > 0);
        all.len()
    }
}

impl std::fmt::Debug for PreparedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMaps").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::synthetic::Rng;
    use crate::align::{fit, AlignedProjector, BandSpec, ProjectorWeights};
    use crate::backend::cpu::CpuBackend;
    use crate::error::Error;

    /// A small projector: image without bias (its embedding route is exact), text with one.
    fn projector() -> AlignedProjector {
        let mut rng = Rng::new(5);
        let mut mat = |r: usize, c: usize| (r, c, (0..r * c).map(|_| rng.normal()).collect());
        let (image, text) = (mat(12, 8), mat(10, 8));
        let bias = Some((0..8).map(|i| 0.01 * i as f64).collect());
        let w = ProjectorWeights::new(image, text, None, bias, "test".into()).unwrap();
        let band = BandSpec::new(1, 3);
        fit(&w, &[(Modality::Image, band), (Modality::Text, band)], None).unwrap()
    }

    fn cpu() -> Arc<dyn Backend> {
        Arc::new(CpuBackend::new(Some(1)).unwrap())
    }

    #[test]
    fn a_map_is_prepared_once_per_backend_and_shares_the_weights() {
        let p = projector();
        let image = p.maps(Modality::Image).unwrap();
        let cache = PreparedMaps::new();
        let (a, b) = (cpu(), cpu());
        let (kind, form) = (InputKind::Features, OutputForm::Compact);
        let first = cache.get(&a, image, kind, form).unwrap();
        let again = cache.get(&a, image, kind, form).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "prepared twice for one backend"
        );
        assert!(
            Arc::ptr_eq(first.shared(), &image.compact),
            "the weights were copied"
        );
        assert_eq!(first.owner(), a.id());
        let for_b = cache.get(&b, image, kind, form).unwrap();
        assert_eq!(for_b.owner(), b.id());
        assert!(!Arc::ptr_eq(&first, &for_b));
        // Every (modality, kind, form) has its own map.
        let full = cache.get(&a, image, kind, OutputForm::Full).unwrap();
        assert!(Arc::ptr_eq(full.shared(), &image.full));
        let emb = cache.get(&a, image, InputKind::Embeddings, form).unwrap();
        assert!(Arc::ptr_eq(
            emb.shared(),
            image.embedding_compact.as_ref().unwrap()
        ));
        let text = p.maps(Modality::Text).unwrap();
        let t = cache.get(&a, text, kind, form).unwrap();
        assert!(Arc::ptr_eq(t.shared(), &text.compact));
        assert_eq!(cache.backends(), 2);
        // A dropped backend's maps go at the next call.
        drop(b);
        drop(for_b);
        assert_eq!(cache.backends(), 1);
    }

    #[test]
    fn an_inexact_embedding_route_is_refused_with_its_reason() {
        let p = projector();
        let text = p.maps(Modality::Text).unwrap();
        let reason = text.embedding_compact.clone().unwrap_err();
        let e = PreparedMaps::new()
            .get(&cpu(), text, InputKind::Embeddings, OutputForm::Full)
            .unwrap_err();
        match e {
            Error::InvalidArgument(m) => assert_eq!(m, reason),
            other => panic!("{other:?}"),
        }
    }
}
