"""clip_text.py against open_clip (the reference implementation of OpenAI's CLIP).

Proves: token ids identical to open_clip's tokenizer; text features identical to open_clip's
encode_text for the two OpenAI architectures after the weights went through both file
formats; that a single mis-mapped weight breaks that parity; clear errors for bad files;
the shared transformer pieces (attention with and without q/k/v bias, stochastic depth).
The prompt learner of paper Eq. 2 is tested in test_model.py."""
import hashlib
import json
import os
import pickle
import random
import zipfile

import open_clip
import pytest
import torch
import torch.nn as nn
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import clip_text
from clip_text import (EOT_TOKEN, SOT_TOKEN, LayerNorm, MultiheadAttention, QuickGELU,
                       TextEncoder, Transformer, load_clip_state_dict, tokenize)

AP10K_NAMES = ["left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
               "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
               "left_back_paw", "right_hip", "right_knee", "right_back_paw"]
COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle"]
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
# OpenAI's checkpoints are TorchScript archives, so the tests must write some; torch warns that scripting is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


# ----------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------

def tokenizer_corpus():
    """>= 200 varied texts; the same every run (seeded)."""
    texts = AP10K_NAMES + COCO_NAMES + [n.replace("_", " ") for n in AP10K_NAMES + COCO_NAMES]
    texts += [
        "a photo of a dog.", "A PHOTO OF A CAT!", "the left front paw of a zebra", "It's the dog's tail, isn't it?",
        "I'LL say they'd've WE'RE you've I'm", "hello,world;semi:colon", "...!!!???", "(parentheses) [brackets] {braces}",
        "e-mail: someone@example.com, url https://x.org/a?b=c&d=e#f", "tabs\tand\nnewlines\r\nand  spaces",
        "   leading and trailing   ", "", " ", "\t\n", "numbers 0 12 345 6789 3.14159 -2e10 1,000,000",
        "year 2023 and 1999", "x1y2z3", "A1B2C3", "&amp; &lt;tag&gt; &quot;quoted&quot; &#39;apos&#39;",
        "&amp;amp; double-escaped &amp;lt;b&amp;gt;", "&nbsp;nbsp&nbsp;", "caf&eacute; na&iuml;ve", "&#x1F436; hex entity",
        "café naïve façade résumé Ångström Øre straße", "Ünïcödé ÀÉÎÕÜ", "Kraków Łódź Gdańsk", "İstanbul ıi",
        "cafÃ© mojibake â€œquotesâ€\x9d", "собака кошка лошадь", "Ελληνικά γράμματα", "עברית שלום", "العربية كلب",
        "हिन्दी कुत्ता", "日本語の犬と猫", "中文狗和猫", "한국어 개 고양이", "ภาษาไทย สุนัข", "ქართული", "Tiếng Việt chó",
        "emoji 🐕 🐈 🦓 🐘", "👍🏽 skin tone", "family 👨\u200d👩\u200d👧\u200d👦 zwj", "flags 🇺🇸🇯🇵", "😀😃😄😁",
        "mixed 狗dog собака🐕123", "math ∑ ∫ √ ≈ ≠ ∞ ± × ÷", "currency $ € £ ¥ ₹ ₿", "arrows → ← ↑ ↓ ⇒",
        "quotes “curly” ‘single’ «guillemets» „low“", "dashes – — ‒ ―", "ellipsis… bullet • middot ·",
        "fullwidth ＡＢＣ１２３", "ideographic\u3000space", "nbsp\xa0inside", "zero\u200bwidth", "soft\xadhyphen",
        "combining e\u0301 a\u0308", "ligature ﬁ ﬂ", "superscripts x² y³ ½ ¼", "roman Ⅻ ⅳ",
        "control\x07bell\x1bescape", "back\\slash/slash|pipe", "under_score__double", "hash#tag @mention",
        "CamelCaseWordsHere", "snake_case_words_here", "kebab-case-words-here", "aaaaaaaaaaaaaaaaaaaaaaaa",
        "pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious",
        "<b>html</b> <br/>", "<start of text> not special", "'s", "'", "''''", "don't", "O'Neil's",
    ]
    rng = random.Random(0)
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n  ",
             ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`", "éèêëàâäôöûüçñåøæœß", "абвгдежзийклмнопрстуфхцчшщыэюя",
             "日本語中文한국어", "🐕🐈🦓🐘👍🏽😀", "αβγδεζηθ", "אבגדה", "ابتث"]
    for _ in range(120):
        n = rng.randint(1, 40)
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    words = ["dog", "cat", "left", "right", "paw", "tail", "the", "of", "a", "zebra", "elbow", "knee", "42"]
    for _ in range(40):
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))))
    return texts


LONG_TEXTS = ["word " * 100, "a photo of a dog " * 30, "日本語" * 80, "🐕" * 200, "x" * 2000,
              " ".join(str(i) for i in range(300)), "long name " * 38, "x " * 76]


def test_vocab_file_is_the_expected_one():
    with open(clip_text.BPE_VOCAB_PATH, "rb") as f:
        data = f.read()
    assert len(data) == 1_356_917
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    tok = clip_text.BPETokenizer()
    assert len(tok.encoder) == 49408 and len(tok.bpe_ranks) == 48894
    assert tok.encoder["<start_of_text>"] == SOT_TOKEN == 49406 and EOT_TOKEN == 49407
    reference = open_clip.tokenizer.SimpleTokenizer()
    assert tok.encoder == reference.encoder and tok.bpe_ranks == reference.bpe_ranks


def test_token_ids_match_open_clip_on_corpus():
    texts = tokenizer_corpus()
    assert len(texts) >= 200
    ours = tokenize(texts)
    ref = open_clip.tokenize(texts)
    bad = [t for t, a, b in zip(texts, ours, ref) if not torch.equal(a, b)]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[:3]!r}"
    assert ours.dtype == torch.long and ours.shape == (len(texts), 77)
    # the same through the factory tokenizer and with another context length
    assert torch.equal(tokenize(texts[:50]), open_clip.get_tokenizer("ViT-B-16")(texts[:50]))
    assert torch.equal(tokenize(texts[:50], context_length=16, truncate=True),
                       open_clip.tokenize(texts[:50], context_length=16))


def test_long_texts_truncate_like_open_clip():
    ours = tokenize(LONG_TEXTS, truncate=True)
    assert torch.equal(ours, open_clip.tokenize(LONG_TEXTS))
    assert (ours[:, -1] == EOT_TOKEN).all() and (ours[:, 0] == SOT_TOKEN).all()
    assert (ours != 0).all()  # every long text fills the whole context


def test_too_long_text_raises_clear_error():
    text = "a photo of a dog " * 30
    with pytest.raises(ValueError, match=r"'a photo of a dog.*\.\.\.' has 152 tokens.*context length 77.*truncate=True"):
        tokenize(["short", text])
    # exactly 77 ids (75 word tokens) fit; 76 words do not
    assert tokenize("x " * 75)[0, -1] == EOT_TOKEN
    with pytest.raises(ValueError, match="78 tokens"):
        tokenize("x " * 76)


def test_tokenize_layout_and_special_strings():
    ids = tokenize("left eye")
    assert ids.shape == (1, 77)
    assert ids[0, :4].tolist() == [SOT_TOKEN, 1823, 3272, EOT_TOKEN] and (ids[0, 4:] == 0).all()
    # a text cannot inject special tokens (open_clip would turn these strings into SOT/EOT ids)
    ids = tokenize("<end_of_text> <start_of_text>")[0]
    assert (ids == EOT_TOKEN).sum() == 1 and (ids == SOT_TOKEN).sum() == 1


# ----------------------------------------------------------------------------------------
# Shared transformer pieces
# ----------------------------------------------------------------------------------------

def test_multihead_attention_matches_torch():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(64, 4, batch_first=True)
    nn.init.normal_(ref.in_proj_bias)
    nn.init.normal_(ref.out_proj.bias)
    ours = MultiheadAttention(64, 4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    q, kv = torch.randn(3, 5, 64), torch.randn(3, 9, 64)
    mask = clip_text.causal_mask(5)
    assert torch.allclose(ours(q, attn_mask=mask), ref(q, q, q, attn_mask=mask, need_weights=False)[0], atol=1e-5)
    assert torch.allclose(ours(q, kv, kv), ref(q, kv, kv, need_weights=False)[0], atol=1e-5)


def test_attention_without_qkv_bias_matches_torch():
    """bias=False: no in_proj_bias parameter; equals torch's attention with zero q/k/v biases."""
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    nn.init.normal_(ref.out_proj.bias)
    ours = MultiheadAttention(32, 4, bias=False)
    assert ours.in_proj_bias is None and "in_proj_bias" not in ours.state_dict()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "in_proj_bias"}, strict=True)
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    assert torch.allclose(ours(q, kv, kv), ref(q, kv, kv, need_weights=False)[0], atol=1e-5)


def test_stochastic_depth_rates_and_modes():
    """Rates rise linearly 0 -> drop_path over the blocks; in training mode a block's two
    branches are dropped per sample (outputs differ between passes, some samples pass
    unchanged through a rate-1 block); eval mode and rate 0 are deterministic."""
    torch.manual_seed(0)
    model = Transformer(16, 5, 2, drop_path=0.4)
    assert [b.drop_rate for b in model.resblocks] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert all(b.drop_rate == 0 for b in Transformer(16, 3, 2).resblocks)  # CLIP's text side
    x = torch.randn(64, 3, 16)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    block = Transformer(16, 1, 2, drop_path=0.5).resblocks[0]  # linspace(0, 0.5, 1) == [0]
    assert block.drop_rate == 0
    block.drop_rate = 0.5
    block.train()
    y = block(x)
    unchanged = (y == x).flatten(1).all(dim=1)  # both branches dropped for these samples
    assert 0 < unchanged.sum() < 64  # about a quarter (0.5 * 0.5)
    with pytest.raises(ValueError, match="drop_path"):
        Transformer(16, 2, 2, drop_path=1.0)


def test_layernorm_fp32_and_quickgelu():
    ln = LayerNorm(8)
    x = torch.randn(2, 8).half()
    y = ln(x)
    assert y.dtype == torch.float16
    assert torch.allclose(y.float(), nn.functional.layer_norm(x.float(), (8,)), atol=1e-3)
    x = torch.linspace(-4, 4, 9)
    assert torch.allclose(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


# ----------------------------------------------------------------------------------------
# Text encoder parity with open_clip, through both file formats
# ----------------------------------------------------------------------------------------

PARITY_TEXTS = ["left front paw", "it's the dog's ROOT_OF_TAIL!", "", "🐕 日本語 café", "a photo of a dog " * 30]


def save_torchscript_archive(state_dict, path):
    """Write `state_dict` as a real TorchScript archive (like OpenAI's RN50.pt): a scripted module
    tree whose buffers carry exactly these keys, plus OpenAI's scalar metadata buffers."""
    root = nn.Module()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if name not in module._modules:
                module.add_module(name, nn.Module())
            module = module._modules[name]
        module.register_buffer(leaf, value.clone())
    root.register_buffer("input_resolution", torch.tensor(224))
    root.register_buffer("context_length", torch.tensor(state_dict["positional_embedding"].shape[0]))
    root.register_buffer("vocab_size", torch.tensor(state_dict["token_embedding.weight"].shape[0]))
    torch.jit.script(root).save(str(path))
    with zipfile.ZipFile(path) as archive:  # really TorchScript: compiled code + constants, as in RN50.pt
        names = archive.namelist()
    assert any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def build_reference(name):
    """A randomly initialised open_clip model, weights rounded to fp16 (OpenAI's files are fp16),
    its fp32 state dict and its encode_text output on PARITY_TEXTS (built once per module:
    creating the full-size models takes seconds)."""
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            p.copy_(p.half().float())
    tokens = open_clip.tokenize(PARITY_TEXTS)
    with torch.no_grad():
        ref = model.encode_text(tokens)
    return {"model": model, "state_dict": model.state_dict(), "tokens": tokens, "features": ref}


@pytest.fixture(scope="module")
def rn50_reference():
    return build_reference("RN50-quickgelu")


@pytest.fixture(scope="module")
def vitb16_reference():
    return build_reference("ViT-B-16-quickgelu")


@pytest.fixture(scope="module")
def vitb16_encoder(vitb16_reference):
    return TextEncoder.from_state_dict(vitb16_reference["state_dict"]).eval()


@pytest.fixture(scope="module")
def scratch_encoder(vitb16_encoder):
    """A second ViT-B/16-sized encoder; every test using it loads a full state dict strictly."""
    return TextEncoder(**vitb16_encoder.config).eval()


def max_diff(encoder, reference, n_texts=None):
    with torch.no_grad():
        out = encoder(reference["tokens"][:n_texts])
    return (out - reference["features"][:n_texts]).abs().max().item()


@pytest.mark.parametrize("arch", ["rn50", "vitb16"])
@pytest.mark.parametrize("file_format", ["plain", "torchscript"])
def test_text_features_match_open_clip_through_file(arch, file_format, request, tmp_path):
    reference = request.getfixturevalue(f"{arch}_reference")
    sd = reference["state_dict"]
    path = tmp_path / "clip.pt"
    if file_format == "plain":
        torch.save(sd, path)
    else:  # fp16, as OpenAI ships them
        save_torchscript_archive({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, path)
    loaded = load_clip_state_dict(path)
    os.remove(path)  # ~0.3-0.6 GB; do not leave it in pytest's temp dirs
    assert set(loaded) == set(sd)  # TorchScript metadata buffers dropped, nothing else
    assert all(v.dtype == torch.float32 for v in loaded.values() if v.is_floating_point())
    encoder = TextEncoder.from_state_dict(loaded).eval()
    expected = dict(embed_dim=1024 if arch == "rn50" else 512, context_length=77, vocab_size=49408,
                    width=512, heads=8, layers=12)
    assert encoder.config == expected
    assert max_diff(encoder, reference) <= 1e-4
    assert tokenize(PARITY_TEXTS, truncate=True).equal(reference["tokens"])


def swap_blocks(sd, i, j):
    out = dict(sd)
    for key in sd:
        if key.startswith(f"transformer.resblocks.{i}."):
            other = key.replace(f"resblocks.{i}.", f"resblocks.{j}.")
            out[key], out[other] = sd[other], sd[key]
    return out


def swap_q_k(sd, block):
    out = dict(sd)
    key = f"transformer.resblocks.{block}.attn.in_proj_weight"
    q, k, v = sd[key].chunk(3)
    out[key] = torch.cat([k, q, v])
    return out


def transpose_projection(sd):
    return {**sd, "text_projection": sd["text_projection"].t().contiguous()}  # square for ViT-B/16


def perturb_one(sd, key):
    value = sd[key].clone()
    value.view(-1)[0] += 0.5
    return {**sd, key: value}


@pytest.mark.parametrize("corrupt", [
    lambda sd: swap_blocks(sd, 3, 4),
    lambda sd: swap_q_k(sd, 0),
    transpose_projection,
    lambda sd: perturb_one(sd, "transformer.resblocks.11.mlp.c_proj.bias"),
    lambda sd: perturb_one(sd, "ln_final.bias"),
    lambda sd: perturb_one(sd, "positional_embedding"),
], ids=["swap-blocks", "swap-q-k", "transposed-projection", "c_proj-bias", "ln_final-bias", "pos-emb"])
def test_a_single_mis_mapped_weight_breaks_parity(corrupt, vitb16_reference, vitb16_encoder, scratch_encoder):
    """The parity test is sensitive: one wrong weight moves the features far beyond its 1e-4."""
    assert max_diff(vitb16_encoder, vitb16_reference, n_texts=2) <= 1e-4  # the correct mapping
    scratch_encoder.load_state_dict(corrupt(vitb16_encoder.state_dict()), strict=True)
    assert max_diff(scratch_encoder, vitb16_reference, n_texts=2) > 1e-3


def test_from_state_dict_is_strict_and_ignores_only_visual_and_logit_scale():
    small = TextEncoder(embed_dim=32, context_length=77, vocab_size=49408, width=128, heads=2, layers=2)
    sd = {**small.state_dict(), "visual.proj": torch.zeros(3), "logit_scale": torch.zeros(())}
    rebuilt = TextEncoder.from_state_dict(sd)
    assert rebuilt.config == {**small.config, "heads": 2}  # heads = width // 64
    tokens = tokenize(["left eye", "nose"])
    assert torch.equal(rebuilt(tokens), small(tokens))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        TextEncoder.from_state_dict({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key"):
        TextEncoder.from_state_dict({k: v for k, v in sd.items() if k != "transformer.resblocks.1.ln_2.bias"})
    assert json.loads(json.dumps(rebuilt.config)) == rebuilt.config


def test_random_init_follows_clip():
    enc = TextEncoder(width=256, layers=4, heads=4, embed_dim=64)
    assert abs(enc.token_embedding.weight.std().item() - 0.02) < 1e-3
    assert abs(enc.positional_embedding.std().item() - 0.01) < 1e-3
    assert abs(enc.text_projection.std().item() - 256 ** -0.5) < 5e-3
    proj_std = 256 ** -0.5 * (2 * 4) ** -0.5
    assert abs(enc.transformer.resblocks[0].mlp.c_proj.weight.std().item() - proj_std) < 2e-3


# ----------------------------------------------------------------------------------------
# load_clip_state_dict error cases
# ----------------------------------------------------------------------------------------

def small_clip_state_dict():
    enc = TextEncoder(embed_dim=32, context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    return {**enc.state_dict(), "visual.proj": torch.randn(64, 32), "logit_scale": torch.tensor(4.6)}


def test_small_checkpoint_roundtrip_both_formats(tmp_path):
    sd = small_clip_state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    save_torchscript_archive(sd, tmp_path / "torchscript.pt")
    for path in [tmp_path / "plain.pt", tmp_path / "torchscript.pt"]:
        loaded = load_clip_state_dict(path)
        assert set(loaded) == set(sd)  # the archive's metadata buffers are dropped
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert set(load_clip_state_dict(str(tmp_path / "plain.pt"))) == set(sd)  # str paths too


def test_missing_file(tmp_path):
    path = tmp_path / "RN50.pt"
    with pytest.raises(FileNotFoundError, match=r"RN50\.pt.*TorchScript archive"):
        load_clip_state_dict(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_clip_state_dict(tmp_path)  # a directory is not a checkpoint file either


@pytest.mark.parametrize("file_format", ["plain", "torchscript"])
def test_truncated_file(file_format, tmp_path):
    sd = small_clip_state_dict()
    full = tmp_path / "full.pt"
    if file_format == "plain":
        torch.save(sd, full)
    else:
        save_torchscript_archive(sd, full)
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cannot read .*cut{cut}\.pt.*truncated"):
            load_clip_state_dict(path)


def test_not_a_clip_checkpoint(tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(ValueError, match=r"resnet18\.pth is not a CLIP checkpoint.*token_embedding.*conv1\.weight"):
        load_clip_state_dict(resnet)

    text_only = tmp_path / "text_only.pt"
    torch.save({k: v for k, v in small_clip_state_dict().items() if not k.startswith("visual.")}, text_only)
    with pytest.raises(ValueError, match=r"text_only\.pt is not a CLIP checkpoint.*visual"):
        load_clip_state_dict(text_only)

    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n" * 20)
    with pytest.raises(ValueError, match=r"cannot read .*notes\.txt"):
        load_clip_state_dict(text)

    not_tensors = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, not_tensors)
    with pytest.raises(ValueError, match=r"config\.pt holds a dict, not a dict of tensors"):
        load_clip_state_dict(not_tensors)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match=r"tensor\.pt holds a Tensor"):
        load_clip_state_dict(tensor)

    module = tmp_path / "scripted.pt"
    torch.jit.script(nn.Linear(3, 3)).save(str(module))
    with pytest.raises(ValueError, match=r"scripted\.pt is not a CLIP checkpoint"):
        load_clip_state_dict(module)


class _Payload:
    """Unpickling this would create a file: weights_only=True must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_arbitrary_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"token_embedding.weight": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(ValueError, match=r"cannot read .*evil\.pt"):
        load_clip_state_dict(path)
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil2.pt")  # zip format too
    with pytest.raises(ValueError, match=r"cannot read .*evil2\.pt"):
        load_clip_state_dict(tmp_path / "evil2.pt")
    assert not marker.exists()
