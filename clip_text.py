"""CLIP's text side, written out by hand and kept key-compatible with OpenAI's checkpoints.

Top to bottom: the transformer pieces shared with `backbones.py`'s image towers, the byte-level
BPE tokenizer (`tokenize`), the text encoder (`TextEncoder` == CLIP's `encode_text`; `model.py`'s
Eq. 2 prompt learner builds on it), `load_clip_state_dict`. Tensors are batch-first: (B, L, d).
"""
import functools
import gzip
import html
import os
import warnings
import zipfile
from collections import OrderedDict

import ftfy
import regex
import torch
import torch.nn as nn
import torch.nn.functional as F

from files import torch_load

# ---------------------------------------------------------------- transformer pieces

class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back to the input dtype (as CLIP does for fp16)."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """CLIP's GELU approximation: x * sigmoid(1.702 x)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def drop_path(x, rate, training):
    """Stochastic depth on a residual branch x (B, ...): in training each sample's branch is zeroed
    with probability `rate`, the kept ones scaled by 1 / (1 - rate); identity otherwise."""
    if not training or rate == 0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - rate)  # (B, 1, ...)
    return x * keep / (1 - rate)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with nn.MultiheadAttention's parameter names, so OpenAI's
    keys load: in_proj_weight (3d, d) [q; k; v rows], in_proj_bias (3d,) (None with bias=False:
    q, k, v without bias), out_proj (Linear d -> d, always with bias)."""

    def __init__(self, d_model, n_head, bias=True):
        super().__init__()
        assert d_model % n_head == 0, f"d_model {d_model} not divisible by n_head {n_head}"
        self.d_model, self.n_head = d_model, n_head
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model)) if bias else None
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's default init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q, k=None, v=None, attn_mask=None):
        """q (B, Lq, d), k and v (B, Lk, d) (default: self-attention) -> (B, Lq, d). attn_mask: an
        ADDITIVE float mask broadcastable to (B, n_head, Lq, Lk), -inf where forbidden, or None."""
        k = q if k is None else k
        v = k if v is None else v
        B, Lq, d = q.shape
        Lk = k.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3, dim=0)  # each (d, d)
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        h, dh = self.n_head, d // self.n_head
        q = F.linear(q, w_q, b_q).view(B, Lq, h, dh).transpose(1, 2)  # (B, h, Lq, dh)
        k = F.linear(k, w_k, b_k).view(B, Lk, h, dh).transpose(1, 2)  # (B, h, Lk, dh)
        v = F.linear(v, w_v, b_v).view(B, Lk, h, dh).transpose(1, 2)  # (B, h, Lk, dh)
        attn_mask = None if attn_mask is None else attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, Lq, dh)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, d))  # (B, Lq, d)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); MLP ratio 4.
    drop_rate: stochastic-depth rate of both residual branches (training mode only)."""

    def __init__(self, d_model, n_head, drop_rate=0.0):
        super().__init__()
        self.drop_rate = drop_rate
        self.ln_1 = LayerNorm(d_model)
        self.attn = MultiheadAttention(d_model, n_head)
        self.ln_2 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, 4 * d_model)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * d_model, d_model))]))

    def forward(self, x, attn_mask=None):
        """x (B, L, d), attn_mask additive (L, L) or None -> (B, L, d)."""
        x = x + drop_path(self.attn(self.ln_1(x), attn_mask=attn_mask), self.drop_rate, self.training)
        return x + drop_path(self.mlp(self.ln_2(x)), self.drop_rate, self.training)


class Transformer(nn.Module):
    """`layers` ResidualAttentionBlocks; keys `resblocks.{i}.*`. Stochastic depth rises
    linearly from 0 at the first block to `drop_path` at the last (0: none, CLIP's text side)."""

    def __init__(self, width, layers, heads, drop_path=0.0):
        super().__init__()
        if not 0 <= drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        rates = torch.linspace(0, drop_path, layers).tolist()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, rate) for rate in rates])

    def forward(self, x, attn_mask=None):
        """x (B, L, width), attn_mask additive (L, L) or None -> (B, L, width)."""
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


def causal_mask(length, device=None, dtype=torch.float32):
    """Additive causal mask (length, length): 0 on and below the diagonal, -inf above."""
    return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)

# ---------------------------------------------------------------- BPE tokenizer (OpenAI CLIP's ids)

BPE_VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
# The vocabulary file's first line is a header; the next 48,894 lines are the merges CLIP
# uses, in priority order (OpenAI writes this as lines[1:49152-256-2+1]). The vocabulary is
# 256 byte tokens + 256 "byte</w>" (end-of-word) tokens + 48,894 merges + 2 specials = 49,408.
N_MERGES = 49152 - 256 - 2
SOT_TOKEN = 49406  # <start_of_text>, the id after all byte tokens and merges
EOT_TOKEN = 49407  # <end_of_text>; the largest id, so argmax(tokens) finds it (CLIP's rule)
# Pre-tokenisation: split the cleaned text into contractions, runs of letters, single digits
# and runs of other non-space symbols; BPE never merges across these pieces. (OpenAI's
# pattern also matches its two special-token strings; we leave them out on purpose, so a
# text can never inject SOT/EOT: '<start_of_text>' is tokenised as the plain characters.)
SPLIT_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def bytes_to_unicode():
    """Each of the 256 bytes -> a printable character (GPT-2's table): the 188 printable bytes map
    to themselves, the other 68 (control chars, space, ...) to chr(256 + n) in byte order, so BPE
    never sees whitespace. The dict's order is the order of the first 256 vocabulary ids."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}  # insertion order = order of the vocabulary's byte tokens
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def clean_text(text):
    """ftfy fix, HTML unescape twice, strip, collapse whitespace (str.split rules), lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class BPETokenizer:
    """OpenAI CLIP's byte-level BPE: text -> list of token ids (without SOT/EOT)."""

    def __init__(self, vocab_path=BPE_VOCAB_PATH):
        with gzip.open(vocab_path) as f:  # bytes, split on '\n' only (no universal newlines)
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]
        self.byte_encoder = bytes_to_unicode()
        byte_tokens = list(self.byte_encoder.values())
        vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.cache = {}  # word -> list of BPE pieces; keypoint names repeat constantly
        assert len(self.encoder) == 49408 and self.encoder["<end_of_text>"] == EOT_TOKEN

    def bpe(self, word):
        """One byte-encoded pre-token -> BPE pieces (the last ends with '</w>'): merge the adjacent
        pair of lowest rank (earliest merge) everywhere it occurs, until no pair is known."""
        if word in self.cache:
            return self.cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols[:-1], symbols[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self.cache[word] = symbols
        return symbols

    def encode(self, text):
        ids = []
        for piece in SPLIT_PATTERN.findall(clean_text(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(word))
        return ids


@functools.lru_cache(maxsize=1)
def _default_tokenizer():
    """The tokenizer over the committed vocabulary, built on first use (~0.3 s) and kept."""
    return BPETokenizer()


def tokenize(texts, context_length=77, truncate=False):
    """Texts -> LongTensor (N, context_length): [SOT, tokens..., EOT, 0, 0, ...]. A longer text
    raises ValueError, unless truncate=True: then it is cut, EOT kept as the last id."""
    texts = [texts] if isinstance(texts, str) else texts
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [SOT_TOKEN] + _default_tokenizer().encode(text) + [EOT_TOKEN]
        if len(ids) > context_length:
            if not truncate:
                short = text if len(text) <= 60 else text[:57] + "..."
                raise ValueError(f"text {short!r} has {len(ids)} tokens (SOT and EOT included), more "
                                 f"than the context length {context_length}; shorten it or pass truncate=True")
            ids = ids[:context_length - 1] + [EOT_TOKEN]
        result[i, :len(ids)] = torch.tensor(ids)
    return result

# ---------------------------------------------------------------- text encoder and checkpoint loading

# Scalar metadata buffers stored in OpenAI's TorchScript archives next to the weights.
_TORCHSCRIPT_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_REQUIRED_TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
                       "transformer.resblocks.0.attn.in_proj_weight")


class TextEncoder(nn.Module):
    """CLIP's text tower with OpenAI's key names; forward(tokens) == CLIP.encode_text."""

    def __init__(self, embed_dim=512, context_length=77, vocab_size=49408, width=512, heads=8, layers=12):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, context_length=context_length, vocab_size=vocab_size,
                           width=width, heads=heads, layers=layers)
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        # CLIP's random init (std 0.02 tokens, 0.01 positions, width-scaled blocks)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
        attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @staticmethod
    def config_from_state_dict(state_dict):
        """Every size from tensor shapes (the checkpoint is the config); heads = width // 64."""
        width = state_dict["ln_final.weight"].shape[0]
        layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")})
        return dict(embed_dim=state_dict["text_projection"].shape[1],
                    context_length=state_dict["positional_embedding"].shape[0],
                    vocab_size=state_dict["token_embedding.weight"].shape[0],
                    width=width, heads=width // 64, layers=layers)

    @classmethod
    def from_state_dict(cls, state_dict):
        """Build from a CLIP state dict and load strictly; only `visual.*` and `logit_scale` are skipped."""
        text_sd = text_state_dict(state_dict)
        model = cls(**cls.config_from_state_dict(text_sd))
        model.load_state_dict(text_sd, strict=True)
        return model

    def forward(self, tokens):
        """tokens (N, L<=context_length) from `tokenize` -> (N, embed_dim) features at EOT."""
        x = self.token_embedding(tokens)  # (N, L, width)
        return self.encode_embeddings(x, tokens.argmax(dim=-1))  # EOT has the largest id

    def encode_embeddings(self, x, eot_index):
        """Token embeddings x (N, L, width), eot_index (N,) -> (N, embed_dim): + positions[:L],
        the transformer under a causal mask, ln_final, projection of the feature at each EOT."""
        N, L, _ = x.shape
        assert L <= self.context_length, f"sequence length {L} > context length {self.context_length}"
        x = x + self.positional_embedding[:L].to(x.dtype)  # (N, L, width)
        x = self.transformer(x, attn_mask=causal_mask(L, x.device, x.dtype))  # (N, L, width)
        x = self.ln_final(x)[torch.arange(N, device=x.device), eot_index]  # (N, width)
        return x @ self.text_projection  # (N, embed_dim)


def text_state_dict(state_dict):
    """The text tower's part of a CLIP state dict: everything but `visual.*` and `logit_scale`."""
    return {k: v for k, v in state_dict.items() if not k.startswith("visual.") and k != "logit_scale"}


def load_clip_state_dict(path):
    """A CLIP checkpoint -> fp32 state dict with OpenAI key names: OpenAI's TorchScript archives
    (RN50.pt, ViT-B-16.pt; read with torch.jit.load, their metadata buffers dropped) or state
    dicts written by torch.save (read with weights_only=True); errors name the path."""
    path = os.fspath(path)
    expected = "an OpenAI CLIP TorchScript archive or a CLIP state dict saved with torch.save"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path} (expected {expected})")
    is_torchscript = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # TorchScript archives carry code/ and constants.pkl
            is_torchscript = any(name.endswith("/constants.pkl") for name in archive.namelist())
    if not is_torchscript:
        state_dict = torch_load(path, expected)
    else:
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated, yet OpenAI's files need it
                warnings.simplefilter("ignore", FutureWarning)
                state_dict = dict(torch.jit.load(path, map_location="cpu").state_dict())
        except Exception as err:
            raise ValueError(f"cannot read {path} (a truncated TorchScript archive?); expected "
                             f"{expected}: {type(err).__name__}: {str(err)[:300]}") from err
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a dict of tensors; expected {expected}")
    missing = [k for k in _REQUIRED_TEXT_KEYS if k not in state_dict]
    if missing or not any(k.startswith("visual.") for k in state_dict):
        found = ", ".join(list(state_dict)[:5])
        raise ValueError(f"{path} is not a CLIP checkpoint: missing {missing or 'visual.* keys'} "
                         f"(found {len(state_dict)} keys: {found}, ...); expected {expected}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()
            if k not in _TORCHSCRIPT_META_KEYS}
