"""``quality-lora data``: pack image folders into RecordIO, describe a dataset."""
from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quality-lora data", description="dataset tools")
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="pack folder/<identity>/<image> into insightface RecordIO",
                        description="Pack folder/<identity>/<image> into out.rec + out.idx "
                        "(insightface layout: header record 0, images, identity ranges).")
    pk.add_argument("folder", help="root of the identity folders")
    pk.add_argument("out", help="output .rec file (the .idx is written next to it)")
    pk.add_argument("--idx", default=None, help="index path (default: OUT with suffix .idx)")
    pk.add_argument("--size", type=int, default=None,
                    help="resize to SIZE x SIZE and store as JPEG (default: keep the bytes)")
    pk.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding")
    pk.add_argument("--on-corrupt", choices=("raise", "skip"), default="raise",
                    help="what to do with images that do not decode (default: raise)")
    info = sub.add_parser("info", help="print what a .rec / .bin / folder holds")
    info.add_argument("path", help=".rec file, folder with train.rec, .bin file or image folder")
    return p


def _info(path: str) -> int:
    from pathlib import Path

    p = Path(path)
    if p.suffix == ".bin":
        from .verification import VerificationBinDataset

        ds = VerificationBinDataset(p)
        print(f"{p}: {len(ds)} images, {ds.num_pairs} pairs ({int(ds.issame.sum())} same)")
    elif p.suffix == ".rec" or (p / "train.rec").is_file():
        from .rec_dataset import RecordDataset

        ds = RecordDataset(p, size=None)
        ranges = ds.identity_ranges()
        print(f"{ds.rec_path}: {len(ds)} images, {len(ranges)} identity records, "
              f"header0={ds.header0}, num_classes={ds.num_classes}, hash={ds.dataset_hash()}")
    else:
        from .folders import ImageFolderDataset

        ds = ImageFolderDataset(p, size=None)
        print(f"{p}: {len(ds)} images, {len(ds.classes)} identities, hash={ds.dataset_hash()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            return _info(args.path)
        from .pack import pack_folder

        r = pack_folder(args.folder, args.out, args.idx, size=args.size, quality=args.quality,
                        on_corrupt=args.on_corrupt)
        print(f"wrote {r.rec_path} and {r.idx_path}: {r.num_images} images, "
              f"{r.num_classes} identities" + (f", {len(r.skipped)} corrupt skipped"
                                               if r.skipped else ""))
        return 0
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"quality-lora data: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
