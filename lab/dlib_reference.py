"""Record dlib's own face descriptors, the reference the dlib importer is tested against.

    pip install dlib-bin==20.0.1.post1    # dlib itself: for this tool only, never a toolkit dependency
    python -m lab.dlib_reference [--out tests/data/dlib_reference.npz]

Inputs: seeded random 150x150 chips (the same on every machine) and the real photos aligned onto the
dlib chip template by ``lab.realfaces``.  Outputs: dlib's ``compute_face_descriptor`` of each chip:
the random chips test the importer exactly, the real ones the alignment (to within image-library noise).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from assets import ensure_asset
from backbones import input_spec
from lab.realfaces import aligned_real_faces

RANDOM_SEED, RANDOM_CHIPS = 20170309, 4


def random_chips() -> np.ndarray:
    """uint8 [4, 150, 150, 3]: two noise chips, two smooth ramps with noise (seeded)."""
    rng = np.random.default_rng(RANDOM_SEED)
    noise = rng.integers(0, 256, (RANDOM_CHIPS, 150, 150, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, 150, dtype=np.float64)[None, :, None, None]
    smooth = (0.5 * ramp.transpose(0, 2, 1, 3) + 0.3 * ramp + 0.2 * noise[2:]).astype(np.uint8)
    return np.concatenate([noise[:2], smooth])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/data/dlib_reference.npz")
    parser.add_argument("--assets-dir", default=None)
    args = parser.parse_args(argv)
    try:
        import dlib
    except ImportError:
        print("error: this tool needs dlib itself: pip install dlib-bin==20.0.1.post1", file=sys.stderr)
        return 1
    model = dlib.face_recognition_model_v1(str(ensure_asset("dlib_resnet_source", args.assets_dir)))
    real, _, _ = aligned_real_faces(args.assets_dir, input_spec("dlib_resnet"))
    chips = {"random": random_chips(), "real": real}
    out = {f"{name}_descriptors": np.stack([np.asarray(model.compute_face_descriptor(np.ascontiguousarray(c)))
                                            for c in batch]).astype(np.float32) for name, batch in chips.items()}
    np.savez(args.out, **out, dlib_version=np.array(dlib.__version__))
    print(f"wrote {args.out}: dlib {dlib.__version__}, {len(chips['random'])} random and {len(real)} real chips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
