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
