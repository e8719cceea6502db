"""LM text features: encode-items with the bundled MiniLM (the real model), item text tables and
their bad inputs, and user behaviour profiles built from training interactions only."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recgoat_dist.cli import main
from recgoat_dist.data.dataset import DataError, Dataset
from recgoat_dist.data.profiles import DEFAULT_TEMPLATE, PROMPT_TEMPLATES, build_user_profiles
from recgoat_dist.data.synthetic import generate_synthetic
from recgoat_dist.data.text import (ENCODERS, encode_items, get_encoder, item_texts, read_item_texts,
                                    register_encoder)

GENRES = ["heavy metal, loud guitars", "death metal, growling vocals", "baroque harpsichord sonatas",
          "jazz piano trio", "k-pop girl group", "ambient drone, dark", "hip hop, boom bap",
          "bluegrass banjo", "techno, berlin, minimal", "opera, soprano arias"]


@pytest.fixture
def dataset(tmp_path) -> str:
    url = str(tmp_path / "dataset")
    generate_synthetic(url, users=40, items=30, topics=3, seed=0, user_text=False)
    return url


def write_tsv(path, rows, header=("item_id", "text")) -> str:
    path.write_text("\t".join(header) + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return str(path)


def token(item: int) -> str:
    return f"tok{item:03d}"


@pytest.fixture(scope="module")
def minilm():
    return get_encoder("minilm")


def test_encode_items_with_minilm(dataset, tmp_path, minilm):
    # Items 0..26 have text (item 5's is blank), 27..29 have none; two rows are not in the dataset.
    rows = [(f"i{i:06d}", "  " if i == 5 else GENRES[i % len(GENRES)]) for i in range(27)]
    text = write_tsv(tmp_path / "items.tsv", rows + [("i999998", "unknown"), ("x", "other")])
    manifest = encode_items(dataset, text, name="text_minilm")

    info = manifest["modalities"]["text_minilm"]
    assert info["dim"] == 384 and info["encoder"] == "minilm"
    assert info["missing_text"] == 4 and info["unmatched_text_rows"] == 2
    assert "empty string" in info["missing_text_policy"]
    assert manifest["modalities"]["text"]["dim"] == 64          # the synthetic modality is untouched
    features = Dataset(dataset).item_features("text_minilm")
    assert features.shape == (30, 384)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    direct = minilm.encode([GENRES[3], ""])
    assert (features[3] @ direct[0]) > 0.9999
    for blank in (5, 27, 29):
        assert (features[blank] @ direct[1]) > 0.9999
    # The model means something: metal is nearer metal than harpsichord sonatas.
    assert features[0] @ features[1] > features[0] @ features[2] + 0.1


def test_minilm_matches_the_shipped_lfm2k_text_features(lfm2k_dataset, lfm2k_dir, minilm):
    ds = Dataset(lfm2k_dataset)
    aligned = item_texts(ds, str(lfm2k_dir / "lfm2k_text.tsv"))
    assert aligned.missing == 0
    rows = np.arange(0, ds.num_items, 120)
    ours = minilm.encode(aligned.texts.take(pa.array(rows)).to_pylist())
    shipped = ds.item_features("text")[rows]
    cosine = (ours * shipped).sum(1) / np.linalg.norm(shipped, axis=1)
    assert cosine.min() > 0.99, cosine


def test_text_table_formats(dataset, tmp_path):
    ds = Dataset(dataset)
    csv = tmp_path / "items.csv"
    csv.write_text('text,item_id\n"metal, loud",i000001\n"",i000002\n')
    assert item_texts(ds, str(csv)).texts[:3].to_pylist() == ["", "metal, loud", ""]
    parquet = str(tmp_path / "items.parquet")
    pq.write_table(pa.table({"item_id": ["i000004"], "text": [None], "extra": [1]}), parquet)
    aligned = item_texts(ds, parquet)
    assert aligned.missing == 30 and aligned.unmatched == 0
    # Ids are compared as strings: leading zeros survive.
    ids, texts = read_item_texts(write_tsv(tmp_path / "zeros.tsv", [("007", "NA"), ("08", "")],
                                           header=("artistID", "text")))
    assert ids.to_pylist() == ["007", "08"] and texts.to_pylist() == ["NA", ""]


def test_encode_items_bad_input(dataset, tmp_path, capsys):
    before = Dataset(dataset).manifest
    only_text = tmp_path / "only_text.tsv"
    only_text.write_text("text\nhello\n")
    parquet = str(tmp_path / "no_text.parquet")
    pq.write_table(pa.table({"item_id": ["i000001"], "title": ["x"]}), parquet)
    cases = [
        (write_tsv(tmp_path / "no_text.tsv", [("i000001", "x")], header=("item_id", "body")),
         r"no_text\.tsv: missing column 'text'"),
        (parquet, r"no_text\.parquet: missing column 'text'"),
        (str(only_text), r"only_text\.tsv: missing the item id column"),
        (str(tmp_path / "absent.tsv"), r"absent\.tsv: file not found"),
        (write_tsv(tmp_path / "empty.tsv", []), r"empty\.tsv: no rows"),
        (write_tsv(tmp_path / "nomatch.tsv", [("u1", "x"), ("u2", "y")]), r"nomatch\.tsv: none of its 2 item ids"),
        (write_tsv(tmp_path / "dup.tsv", [("i000001", "x"), ("i000002", "y"), ("i000001", "z")]),
         r"dup\.tsv: row 2: column 'item_id': item id 'i000001' appears twice"),
    ]
    for path, message in cases:
        with pytest.raises(DataError, match=message):
            encode_items(dataset, path, name="text_minilm")
    good = write_tsv(tmp_path / "good.tsv", [("i000001", "x")])
    with pytest.raises(DataError, match="'text' already exists"):
        encode_items(dataset, good, name="text")
    with pytest.raises(DataError, match="unknown modality name"):
        encode_items(dataset, good, name="captions")
    with pytest.raises(ValueError, match="unknown text encoder 'gpt'; available: .*minilm"):
        encode_items(dataset, good, name="text_minilm", encoder="gpt")
    assert Dataset(dataset).manifest == before
    # Through the command line: one clear line, exit status 2.
    assert main(["prepare", "encode-items", "--data", dataset, "--text", cases[0][0], "--name", "text_lm"]) == 2
    assert "missing column 'text'" in capsys.readouterr().err


class RecordingEncoder:
    """A stand-in LM that remembers every prompt it is asked to encode."""

    dim = 8

    def __init__(self):
        self.prompts: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.prompts.extend(texts)
        return np.array([[len(t), t.count(";"), 1, 0, 0, 0, 0, 0] for t in texts], dtype=np.float32)


@pytest.fixture
def recording():
    encoder = RecordingEncoder()
    register_encoder("recording", lambda: encoder)
    yield encoder
    ENCODERS.pop("recording")


def token_table(tmp_path) -> str:
    return write_tsv(tmp_path / "tokens.tsv", [(f"i{i:06d}", token(i)) for i in range(30)])


def test_user_profiles_read_training_items_only(dataset, tmp_path, recording):
    manifest = build_user_profiles(dataset, token_table(tmp_path), encoder="recording")
    info = manifest["user_modalities"]["text"]
    assert info["dim"] == 8 and info["prompt_template"] == DEFAULT_TEMPLATE and info["max_items"] == 50
    ds = Dataset(dataset)
    assert ds.user_features("text").shape == (40, 8)
    assert len(recording.prompts) == ds.num_users                  # one prompt per user, in user order
    rows = ds.interactions()
    for user, prompt in enumerate(recording.prompts):
        mine = rows["user_id"] == user
        train = {token(i) for i in rows["item_id"][mine & (rows["split"] == 0)]}
        held_out = {token(i) for i in rows["item_id"][mine & (rows["split"] > 0)]}
        assert held_out and not any(t in prompt for t in held_out), (user, prompt)
        assert {t for t in train if t in prompt} == train


def test_user_profiles_keep_the_most_recent_items(dataset, tmp_path, recording):
    build_user_profiles(dataset, token_table(tmp_path), encoder="recording", max_items=2)
    train = next(Dataset(dataset).iter_interactions(["train"], ["user_id", "item_id", "timestamp"]))
    for user in (0, 7, 39):
        mine = train.filter(pa.compute.equal(train["user_id"], user))
        recent = np.argsort(-mine["timestamp"].to_numpy())[:2]
        expected = "; ".join(token(i) for i in mine["item_id"].to_numpy()[recent])
        assert expected in recording.prompts[user]
        assert recording.prompts[user].count("tok") == 2


def test_user_profiles_with_minilm(dataset, tmp_path, minilm):
    text = write_tsv(tmp_path / "items.tsv", [(f"i{i:06d}", GENRES[i % len(GENRES)]) for i in range(30)])
    assert main(["prepare", "user-profiles", "--data", dataset, "--text", text]) == 0
    ds = Dataset(dataset)
    features = ds.user_features("text")
    assert features.shape == (40, 384)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    info = json.loads(json.dumps(ds.user_modalities["text"]))
    assert info["encoder"] == "minilm" and info["history"].startswith("train split only")
    with pytest.raises(DataError, match="user modality 'text' already exists"):
        build_user_profiles(dataset, text)


def test_prompt_truncation():
    form = PROMPT_TEMPLATES[DEFAULT_TEMPLATE]
    long_tags = ",".join(f"tag{k}" for k in range(200))
    prompt = form.render([long_tags] * 30)
    assert len(prompt) <= form.prompt_chars and prompt.endswith(".")
    assert "tag1" in prompt and ",tag" in prompt and ", ;" not in prompt
    assert prompt.count(";") < 30                                   # budget, not item count, binds
    assert form.render([]) == form.render(["", "  "]) == form.empty


def test_short_prompt_template_covers_more_of_a_long_history(dataset, tmp_path, recording, capsys):
    v1, v2 = PROMPT_TEMPLATES["interacted_with_v1"], PROMPT_TEMPLATES["interacted_with_short_v2"]
    titles = [f"Title {k}. " + "a long description of the item " * 8 for k in range(40)]
    long_prompt, short_prompt = v1.render(titles), v2.render(titles)
    assert len(short_prompt) <= v2.prompt_chars and short_prompt.endswith(".")
    assert short_prompt.count("Title") > 2 * long_prompt.count("Title") >= 10   # 15 items against 6
    assert "Title 0." in short_prompt and "Title 14." in short_prompt and "Title 15." not in short_prompt
    # Through the command line: the template is recorded with the features; an unknown one is one line.
    table = token_table(tmp_path)
    assert main(["prepare", "user-profiles", "--data", dataset, "--text", table, "--encoder", "recording",
                 "--template", "interacted_with_nope"]) == 2
    assert "unknown prompt template 'interacted_with_nope'" in capsys.readouterr().err
    assert "text" not in Dataset(dataset).user_modalities
    assert main(["prepare", "user-profiles", "--data", dataset, "--text", table, "--encoder", "recording",
                 "--template", "interacted_with_short_v2"]) == 0
    assert Dataset(dataset).user_modalities["text"]["prompt_template"] == "interacted_with_short_v2"
