#!/usr/bin/env python3
"""Reference implementation of IsoCLIP's projector construction, for parity tests.

Mirrors `apply_iso` in src/retrieval.py of github.com/simomagi/IsoCLIP (read at commit 84f80c9):

    W_image = W_image.T ; W_text = W_text.T            # checkpoints store "input x output"
    psi = W_image.T @ W_text                          # (d_i x d_t)
    U, S, Vh = svd(psi, full_matrices=False) ; V = Vh.T ; r = len(S)
    if k_top + k_bottom >= r: raise ValueError
    U_k = U[:, k_top:r-k_bottom] ; V_k = V[:, k_top:r-k_bottom]
    W_text_iso  = W_text  @ V_k @ V_k.T                # (d x d_t)
    W_image_iso = W_image @ U_k @ U_k.T                # (d x d_i)
    return W_text_iso.T, W_image_iso.T                 # used as  X @ W_iso.T

plus the two exact reformulations of docs/METHOD.md §4–5 (compact output, embedding route), written
here independently of the Rust code. The reference runs in fp32 torch; we use float64 so the
fixtures carry the exact answer and differences measure the port, not fp32 SVD noise.

Projector weights are not stored: both this script and the Rust tests generate them with the
same SplitMix64 generator (uniform values, integer arithmetic only, so both sides get identical
bits). Run from the repository root:  python3 tests/reference/apply_iso_reference.py
"""
import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "parity")
MASK = (1 << 64) - 1


class SplitMix64:
    """Bit-identical to isoclip::align::synthetic::Rng."""

    def __init__(self, seed):
        self.state = (seed ^ 0x9E3779B97F4A7C15) & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform_matrix(self, rows, cols):
        """Entries (u * 2 - 1) * 0.05 with u = (next >> 11) * 2^-53, row-major (as in Rust)."""
        vals = np.array([self.next_u64() >> 11 for _ in range(rows * cols)], dtype=np.float64)
        u = vals * (1.0 / float(1 << 53))
        return ((u * 2.0 - 1.0) * 0.05).reshape(rows, cols)


def apply_iso(proj_image, proj_text, k_top, k_bottom):
    """The official apply_iso, on projectors stored "input x output" (like checkpoints)."""
    W_image = proj_image.T
    W_text = proj_text.T
    psi = W_image.T @ W_text
    U, S, Vh = np.linalg.svd(psi, full_matrices=False)
    V = Vh.T
    r = len(S)
    if k_top + k_bottom >= r:
        raise ValueError("k_top + k_bottom must be < r")
    U_k = U[:, k_top:r - k_bottom]
    V_k = V[:, k_top:r - k_bottom]
    W_text_iso = W_text @ V_k @ V_k.T
    W_image_iso = W_image @ U_k @ U_k.T
    return W_text_iso.T, W_image_iso.T, S, U_k, V_k


def compact_and_embedding(P_own, P_other, own_basis, other_basis, sigma_band):
    """docs/METHOD.md §4–5: z = x U_m R^T with P^T U_m = Q R; embedding route E = P_other^T W_m S^-1 R^T."""
    Q, R = np.linalg.qr(P_own.T @ own_basis)
    compact = own_basis @ R.T
    embedding = (P_other.T @ other_basis / sigma_band[None, :]) @ R.T
    return compact, embedding


def cosines(Y):
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    return Yn @ Yn.T


def augment(P, b):
    return np.vstack([P, b[None, :]]) if b is not None else P


CASES = [
    # name, d_i, d_t, d, image band, text band, bias
    ("vit_b", 768, 512, 512, (200, 50), (10, 50), False),
    ("vit_l", 1024, 768, 768, (250, 200), (10, 300), False),
    ("pe", 768, 1024, 1024, (300, 50), None, False),
    ("bias", 96, 64, 80, (20, 10), (5, 10), True),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {}
    for case_index, (name, di, dt, d, band_i, band_t, bias) in enumerate(CASES):
        rng = SplitMix64(1000 + case_index)
        P_i = rng.uniform_matrix(di, d)
        P_t = rng.uniform_matrix(dt, d)
        b_i = rng.uniform_matrix(1, d)[0] if bias else None
        b_t = rng.uniform_matrix(1, d)[0] if bias else None
        probes = rng.uniform_matrix(8, di) * 20.0  # image features to compare cosines on
        Pi_aug, Pt_aug = augment(P_i, b_i), augment(P_t, b_t)
        entry = {"d_i": di, "d_t": dt, "d": d, "bias": bias, "seed": 1000 + case_index}
        for modality, band in (("image", band_i), ("text", band_t)):
            if band is None:
                continue
            kt, kb = band
            A_txt, A_img, S, U_k, V_k = apply_iso(Pi_aug, Pt_aug, kt, kb)
            r = len(S)
            sig = S[kt:r - kb]
            if modality == "image":
                full = A_img
                compact, emb = compact_and_embedding(Pi_aug, Pt_aug, U_k, V_k, sig)
                X = np.hstack([probes, np.ones((8, 1))]) if bias else probes
            else:
                full = A_txt
                compact, emb = compact_and_embedding(Pt_aug, Pi_aug, V_k, U_k, sig)
                X = rng.uniform_matrix(8, dt) * 20.0
                X = np.hstack([X, np.ones((8, 1))]) if bias else X
            np.save(os.path.join(OUT, f"{name}_{modality}_full.npy"), np.ascontiguousarray(full, dtype=np.float32))
            cos_full = cosines(X @ full)
            cos_compact = cosines(X @ compact)
            feats = X[:, :-1] if bias else X
            np.save(os.path.join(OUT, f"{name}_{modality}_probes.npy"), np.ascontiguousarray(feats, dtype=np.float32))
            np.save(os.path.join(OUT, f"{name}_{modality}_cos.npy"), np.ascontiguousarray(cos_full))
            m_entry = {
                "k_top": kt,
                "k_bottom": kb,
                "r": r,
                "m": r - kt - kb,
                "max_abs_cos_full_vs_compact": float(np.abs(cos_full - cos_compact).max()),
            }
            if not bias:
                E = X @ (P_i if modality == "image" else P_t)
                cos_emb = cosines(E @ emb)
                m_entry["max_abs_cos_full_vs_embedding"] = float(np.abs(cos_full - cos_emb).max())
            m_entry["sigma_first"] = float(S[0])
            m_entry["sigma_last"] = float(S[-1])
            entry[modality] = m_entry
        manifest[name] = entry
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(manifest, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
