"""``recgoat prepare ...``: build a canonical dataset from MMRec files, generic Parquet, or the
embedded synthetic generator, and add LM features (item text, user behaviour profiles)."""
from __future__ import annotations

import argparse


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} {value!r}: expected NAME=FILE")
        if name in pairs:
            raise ValueError(f"{flag}: modality {name!r} given twice")
        pairs[name] = path
    return pairs


def _mmrec(args: argparse.Namespace) -> None:
    from recgoat_dist.data.mmrec import prepare_mmrec

    prepare_mmrec(args.inter, _pairs(args.feature, "--feature"), args.out, original_ids=args.original_ids,
                  user_map=args.user_map, item_map=args.item_map, overwrite=args.overwrite)


def _parquet(args: argparse.Namespace) -> None:
    from recgoat_dist.data.generic import prepare_parquet

    prepare_parquet(args.interactions, _pairs(args.item_feature, "--item-feature"), args.out,
                    k_core=args.k_core, seed=args.seed, overwrite=args.overwrite)


def _synthetic(args: argparse.Namespace) -> None:
    from recgoat_dist.data.synthetic import generate_synthetic

    generate_synthetic(args.out, users=args.users, items=args.items, seed=args.seed, overwrite=args.overwrite,
                       interactions_per_user=args.interactions_per_user, topics=args.topics,
                       text_dim=args.text_dim, modalities=tuple(args.modalities.split(",")),
                       chunk_users=args.chunk_users)


def _encode_items(args: argparse.Namespace) -> None:
    from recgoat_dist.data.text import encode_items

    encode_items(args.data, args.text, name=args.name, encoder=args.encoder)


def _user_profiles(args: argparse.Namespace) -> None:
    from recgoat_dist.data.profiles import DEFAULT_TEMPLATE, build_user_profiles

    build_user_profiles(args.data, args.text, encoder=args.encoder, template=args.template or DEFAULT_TEMPLATE)


def register(subparsers) -> None:
    prepare = subparsers.add_parser("prepare", help="build or extend a canonical dataset")
    sub = prepare.add_subparsers(dest="source", required=True)

    p = sub.add_parser("mmrec", help="MMRec .inter + per-modality .npy features")
    p.add_argument("--inter", required=True, help="userID itemID rating [timestamp] x_label (TSV)")
    p.add_argument("--feature", action="append", metavar="NAME=FILE.npy",
                   help="item modality; row i = item i (repeatable)")
    p.add_argument("--original-ids", help="row-aligned copy of --inter holding original ids")
    p.add_argument("--user-map", help="MMRec u_id_mapping.csv")
    p.add_argument("--item-map", help="MMRec i_id_mapping.csv")
    p.set_defaults(func=_mmrec)

    p = sub.add_parser("parquet", help="generic interactions with original string ids")
    p.add_argument("--interactions", required=True,
                   help="Parquet/CSV/TSV with user_id, item_id [, rating, timestamp, split]")
    p.add_argument("--item-feature", action="append", metavar="NAME=URL",
                   help="Parquet with item_id (original) and embedding (list<float>) (repeatable)")
    p.add_argument("--k-core", type=int, default=5, help="k-core filter on users and items (0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/10/10 per-user split")
    p.set_defaults(func=_parquet)

    p = sub.add_parser("synthetic", help="the embedded default: a planted multimodal generative model")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interactions-per-user", type=float, default=20.0, help="mean interactions per user")
    p.add_argument("--topics", type=int, default=32, help="planted communities (item topics)")
    p.add_argument("--text-dim", type=int, default=64, help="dimension of the item/user text modality")
    p.add_argument("--modalities", default="text,visual", help="item modalities: text,visual or text")
    p.add_argument("--chunk-users", type=int, default=50_000,
                   help="users generated (and held in memory) at once; part of the seed's output")
    p.set_defaults(func=_synthetic)

    for p in (sub.choices["mmrec"], sub.choices["parquet"], sub.choices["synthetic"]):
        p.add_argument("--out", required=True, help="dataset URL (local path, file://, s3://, memory://)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")

    p = sub.add_parser("encode-items", help="embed item text with a language model as a new modality")
    p.add_argument("--data", required=True, help="dataset URL")
    p.add_argument("--text", required=True, help="TSV/CSV/Parquet: original item id, text")
    p.add_argument("--name", default="text", help="modality name (default: text)")
    p.add_argument("--encoder", default="minilm")
    p.set_defaults(func=_encode_items)

    p = sub.add_parser("user-profiles", help="encode a behaviour prompt per user (user modality text)")
    p.add_argument("--data", required=True, help="dataset URL")
    p.add_argument("--text", required=True, help="TSV/CSV/Parquet: original item id, text")
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--template",
                   help="how the prompt is written: interacted_with_v1 (default) or interacted_with_short_v2 "
                        "(recgoat_dist/data/profiles.py: PROMPT_TEMPLATES)")
    p.set_defaults(func=_user_profiles)
