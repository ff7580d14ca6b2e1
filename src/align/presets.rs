//! The authors' bands per model (DESIGN.md §1 table; PAPER-NOTES.md §4, from the official scripts).

use super::BandSpec;

/// A named model with the shapes its projectors must have and the bands the authors used.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    /// Pre-projection image dimension (without the bias row), text dimension, embedding dim.
    pub d_image: usize,
    pub d_text: usize,
    pub d: usize,
    pub image: Option<BandSpec>,
    pub text: Option<BandSpec>,
}

const fn band(k_top: usize, k_bottom: usize) -> Option<BandSpec> {
    Some(BandSpec { k_top, k_bottom })
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "openai-vit-b-32",
        description: "OpenAI CLIP ViT-B/32 (768->512, 512->512)",
        d_image: 768,
        d_text: 512,
        d: 512,
        image: band(150, 50),
        text: band(20, 100),
    },
    Preset {
        name: "openai-vit-b-16",
        description: "OpenAI CLIP ViT-B/16 (768->512, 512->512)",
        d_image: 768,
        d_text: 512,
        d: 512,
        image: band(200, 50),
        text: band(10, 50),
    },
    Preset {
        name: "openai-vit-l-14",
        description: "OpenAI CLIP ViT-L/14 (1024->768, 768->768)",
        d_image: 1024,
        d_text: 768,
        d: 768,
        image: band(250, 200),
        text: band(10, 300),
    },
    Preset {
        name: "openclip-vit-b-32-datacomp",
        description: "OpenCLIP ViT-B/32 datacomp_xl_s13b_b90k",
        d_image: 768,
        d_text: 512,
        d: 512,
        image: band(50, 50),
        text: None,
    },
    Preset {
        name: "openclip-vit-b-16-datacomp",
        description: "OpenCLIP ViT-B/16 datacomp_xl_s13b_b90k",
        d_image: 768,
        d_text: 512,
        d: 512,
        image: band(100, 100),
        text: band(2, 150),
    },
    Preset {
        name: "pe-core-b-16",
        description: "PE-Core-B-16 meta (768->1024, 1024->1024)",
        d_image: 768,
        d_text: 1024,
        d: 1024,
        image: band(300, 50),
        text: None,
    },
    Preset {
        name: "siglip2-vit-b-16",
        description: "SigLIP2 ViT-B-16 webli, bias-augmented (769)",
        d_image: 768,
        d_text: 768,
        d: 768,
        image: band(350, 50),
        text: None,
    },
];

/// Looks a preset up by name; also accepts `ViT-B/16`-style spellings (case-insensitive,
/// '/' and '_' read as '-').
pub fn find(name: &str) -> Option<&'static Preset> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['/', '_'], "-");
    let n = norm(name);
    PRESETS.iter().find(|p| norm(p.name) == n)
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_authors_scripts() {
        // Kept counts from PAPER-NOTES.md §4 (r - k_top - k_bottom).
        let b16 = find("openai-vit-b-16").unwrap();
        assert_eq!(b16.image.unwrap().kept(512).unwrap(), 262);
        let l14 = find("OpenAI-ViT-L/14").unwrap();
        assert_eq!(l14.image.unwrap().kept(768).unwrap(), 318);
        assert_eq!(l14.text.unwrap().kept(768).unwrap(), 458);
        let pe = find("pe-core-b-16").unwrap();
        assert_eq!(pe.image.unwrap().kept(768).unwrap(), 418);
        let sig = find("siglip2-vit-b-16").unwrap();
        assert_eq!(sig.image.unwrap().kept(769).unwrap(), 369);
        assert!(find("no-such-model").is_none());
    }
}
