"""Export: the quantized model as a compressed-tensors `pack-quantized` checkpoint.

Astro only changes the weights that GPTQ/RTN then quantize, so its result is a plain group-quantized
checkpoint with no extra operator at inference (the paper's zero-overhead claim). This module writes
that checkpoint through the compressed-tensors library so that standard tools (transformers; vLLM at
4/8 bits) load it without any code from this repository.

Grid mapping (astro.quantizer -> compressed-tensors QuantizationArgs, type int):
- Our codes q in [0, 2^b - 1] dequantize as scale * (q - zero). compressed-tensors keeps signed codes
  c in [-2^(b-1), 2^(b-1) - 1] and dequantizes as scale * (c - zp) (zp absent when symmetric), so
  c = q - 2^(b-1) and zp = zero - 2^(b-1): the same products, bit for bit in float32.
- Symmetric grid (paper eq. 1-2): zero = 2^(b-1) in every group, i.e. zp = 0, which the format omits.
- The packer stores c + 2^(b-1) (= q) densely in int32 words (any b in 1..8, so 2 and 3 bits too);
  asymmetric zero points are packed the same way along the output dimension.
- group_size g -> strategy 'group' (g must divide in_features: the format has no partial last group);
  per-channel (-1) -> strategy 'channel'.
- Act-order: compressed-tensors 0.20 stores no g_idx (actorder='group' was removed upstream), so only
  contiguous groups can be written: GPTQ act-order with gptq.static_groups=true, recorded as
  actorder='weight'. Act-order with groups fitted in permuted order is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .quantizer import QParams, QuantGrid, QuantResult, contiguous_g_idx, dequantize

log = logging.getLogger(__name__)

FORMAT = "pack-quantized"
SERVED_BITS = (4, 8)   # bit-widths vLLM's compressed-tensors WNA16 kernels serve
REQUIRED_CARD_KEYS = ("base_model", "method", "calibration", "ppl")
CARD_FILE = "README.md"
CARD_JSON = "astro_export.json"


class ExportError(ValueError):
    """The model or its quantization cannot be written in the pack-quantized format."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    n_quantized: int                  # linears stored as packed integer codes
    ignored: tuple[str, ...]          # linears kept dense (e.g. lm_head)
    quantization_config: dict         # the `quantization_config` written into config.json
    inventory: dict                   # tensor counts, elements and bytes on disk (checkpoint_inventory)
    seconds: float


class ExportCollector:
    """`on_linear` callback for astro.run.quantize_model: keeps each quantized linear's codes and grid
    parameters (on CPU) by qualified module name. W_q is not kept: the model holds those weights, and
    export_checkpoint checks them against the codes."""

    def __init__(self):
        self.results: dict[str, QuantResult] = {}

    def __call__(self, name: str, outcome) -> None:
        q = outcome.quant
        if q is None:  # unquantized pipelines (fp, astro, magr) have nothing to pack
            return
        if name in self.results:
            raise ExportError(f"{name} was quantized twice into one ExportCollector; use a fresh collector per run")
        qp = q.qparams
        self.results[name] = QuantResult(torch.empty(0), q.codes.cpu(), QParams(
            qp.scale.cpu(), qp.zero.cpu(), qp.g_idx.cpu(), qp.grid), q.fallback, q.dead_columns)


def quantization_args(grid: QuantGrid, act_order: bool = False):
    """compressed-tensors QuantizationArgs for our grid (module docstring: mapping)."""
    from compressed_tensors.quantization import QuantizationArgs
    per_channel = grid.group_size == -1
    return QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.sym,
                            strategy="channel" if per_channel else "group",
                            group_size=None if per_channel else grid.group_size,
                            actorder="weight" if act_order else None)


def check_exportable(model: nn.Module, qresults: Mapping[str, QuantResult]) -> QuantGrid:
    """Everything the format cannot hold raises ExportError here, before any packing or writing.
    Returns the one grid shared by all quantized linears."""
    if not qresults:
        raise ExportError("nothing to export: no quantized linears were collected (the 'fp', 'astro' and 'magr' "
                          "methods do not quantize; pass an ExportCollector as quantize_model's on_linear)")
    grids = {qr.qparams.grid for qr in qresults.values()}
    if len(grids) > 1:
        raise ExportError(f"the linears use different grids {sorted(map(str, grids))}; one pack-quantized "
                          "config group per grid is not supported by this exporter")
    grid = grids.pop()
    for name, qr in qresults.items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise ExportError(f"{name}: no such module in the model") from None
        if not isinstance(lin, nn.Linear):
            raise ExportError(f"{name}: pack-quantized stores torch.nn.Linear weights, got {type(lin).__name__}")
        n_in, g = lin.in_features, grid.group_len(lin.in_features)
        if n_in % g:
            raise ExportError(f"{name}: group_size {g} does not divide in_features {n_in}; the last group would "
                              f"have {n_in % g} columns, which pack-quantized cannot hold (it has no partial last "
                              "group). Quantize with a group size that divides every layer width (e.g. 64 for "
                              "SmolLM2) or per-channel (group_size=-1)")
        qp = qr.qparams
        if qr.codes.shape != lin.weight.shape or qp.scale.shape != (lin.out_features, n_in // g):
            raise ExportError(f"{name}: codes {tuple(qr.codes.shape)} / scales {tuple(qp.scale.shape)} do not match "
                              f"the layer's weight {tuple(lin.weight.shape)} with group size {g}")
        if not torch.equal(qp.g_idx.cpu(), contiguous_g_idx(n_in, grid)):
            raise ExportError(f"{name}: its groups are not contiguous (act-order g_idx). compressed-tensors 0.20 "
                              "stores no g_idx (actorder='group' was removed), so quantize with "
                              "method.gptq.static_groups=true to keep act-order on contiguous groups")
        zero = qp.zero
        if grid.sym and not bool((zero == 2 ** (grid.bits - 1)).all()):
            raise ExportError(f"{name}: a symmetric grid must have zero = 2^(bits-1) in every group")
        if not bool(((zero >= 0) & (zero <= grid.maxq) & (zero == zero.round())).all()):
            raise ExportError(f"{name}: zero points must be integers in [0, {grid.maxq}]")
    return grid


def check_run_exportable(cfg, model: nn.Module | None = None) -> None:
    """Refuse, before any calibration, a RunConfig-like cfg whose result could not be exported: a method
    that does not quantize, GPTQ act-order with permuted groups, or (given the model) a group size that
    leaves a partial last group in some processed linear."""
    m = cfg.method
    if m.quantizer is None:
        raise ExportError(f"method {m.name!r} does not quantize, so there is nothing to pack; export a "
                          "quantizing method (rtn, gptq, astro_gptq, ...)")
    if m.quantizer == "gptq" and m.gptq.act_order and not m.gptq.static_groups:
        raise ExportError("gptq.act_order=true fits groups in permuted order (a g_idx), which compressed-tensors "
                          "0.20 cannot store; set method.gptq.static_groups=true to export act-order")
    if model is not None:
        from .architectures import architecture_of, get_module
        arch = architecture_of(model)
        for b, block in enumerate(get_module(model, arch.blocks)):
            for name in arch.linears:
                n_in = block.get_submodule(name).in_features
                g = cfg.quant.group_len(n_in)
                if n_in % g:
                    raise ExportError(f"{arch.blocks}.{b}.{name}: group_size {g} does not divide in_features {n_in} "
                                      "(a partial last group, which pack-quantized cannot hold)")


def _pack_linear(W: torch.Tensor, qr: QuantResult, scheme, name: str) -> dict[str, torch.Tensor]:
    """Compressed tensors of one linear through the library's pack-quantized compressor; the packed
    codes are unpacked again and compared with ours, so the file holds exactly our integers."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    qp, grid = qr.qparams, qr.qparams.grid
    half = 2 ** (grid.bits - 1)
    n_out, n_in = W.shape
    G = qp.scale.shape[1]
    scale, zero = qp.scale.to(W.device, torch.float32), qp.zero.to(W.device, torch.float32)
    codes = qr.codes.to(W.device)
    # groups are contiguous (checked), so a [out, G, g] view replaces the g_idx gather
    W_deq = dequantize(codes.view(n_out, G, -1).float(), scale[..., None], zero[..., None]).view(n_out, n_in)
    if not torch.equal(W, W_deq.to(W.dtype)):  # what quantize_model wrote into the model
        diff = float((W.float() - W_deq).abs().max())
        raise ExportError(f"{name}: the model's weights are not the dequantized codes collected for it (max |diff| "
                          f"{diff:.3g}); export right after quantize_model, before Session.reset() or another run")
    state = {"weight": W_deq, "weight_scale": scale}
    if not grid.sym:
        state["weight_zero_point"] = (zero - half).to(torch.int8)
    out = PackedQuantizationCompressor.compress(state, scheme)
    signed = unpack_from_int32(out["weight_packed"], grid.bits, W.shape)
    if not torch.equal(signed, (codes.to(torch.int16) - half).to(torch.int8)):
        raise ExportError(f"{name}: the packed codes differ from the quantizer's codes (packing bug)")
    # the loader builds the scale in the model's dtype; storing it so keeps the file what it loads as
    out["weight_scale"] = out["weight_scale"].to(W.dtype)
    return out


def checkpoint_inventory(path: str | Path) -> dict:
    """Tensors of a saved checkpoint read from the safetensors headers: count, elements and bytes per
    dtype, total tensor bytes, and bytes of the .safetensors files on disk."""
    from safetensors import safe_open
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    by_dtype: dict[str, dict[str, int]] = {}
    shapes: dict[str, tuple] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                sl = st.get_slice(k)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                n = 1
                for s in shape:
                    n *= s
                d = by_dtype.setdefault(dtype, {"tensors": 0, "elements": 0, "bytes": 0})
                d["tensors"] += 1
                d["elements"] += n
                d["bytes"] += n * torch.empty(0, dtype=_ST_DTYPES[dtype]).element_size()
                shapes[k] = (shape, dtype)
    return {"by_dtype": by_dtype, "tensor_bytes": sum(d["bytes"] for d in by_dtype.values()),
            "file_bytes": sum(f.stat().st_size for f in files), "n_tensors": len(shapes), "layout": shapes}


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def export_checkpoint(model: nn.Module, tokenizer, qresults: Mapping[str, QuantResult], out_dir: str | Path,
                      card: dict, *, act_order: bool = False, overwrite: bool = False) -> ExportResult:
    """Write `model` (whose quantized linears hold the dequantized codes in `qresults`) as a
    compressed-tensors pack-quantized checkpoint with its tokenizer and a model card (README.md).

    card: at least base_model, method, calibration and ppl (measured; None if not measured), plus any
    further entries to list. act_order: GPTQ ran in act-order with static groups (metadata only).
    The model is not modified (save_pretrained stamps config.dtype/architectures, as always).
    The directory is written next to out_dir and moved into place when complete.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
    t0 = time.perf_counter()
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ExportError(f"model card is missing {missing}; required keys: {list(REQUIRED_CARD_KEYS)}")
    if tokenizer is None:
        raise ExportError("a tokenizer is required: the checkpoint must be loadable on its own")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True or choose a new directory")
    grid = check_exportable(model, qresults)
    if grid.bits not in SERVED_BITS:
        log.warning("W%d pack-quantized loads in transformers, but vLLM's compressed-tensors kernels serve only "
                    "%s bits", grid.bits, SERVED_BITS)

    args = quantization_args(grid, act_order)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, format=FORMAT)
    ignored = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in qresults)
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, ignore=list(ignored), format=FORMAT,
                                 quantization_status="compressed")

    state = dict(model.state_dict())   # references; the model's tensors are not changed
    with torch.no_grad():
        for name, qr in qresults.items():
            W = state.pop(f"{name}.weight")
            for k, v in _pack_linear(W, qr, scheme, name).items():
                state[f"{name}.{k}"] = v

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state)
    ModelCompressor(quantization_config=qconfig).update_config(str(tmp))
    tokenizer.save_pretrained(tmp)
    written = json.loads((tmp / "config.json").read_text())["quantization_config"]
    inventory = checkpoint_inventory(tmp)
    meta = {"card": card, "grid": {"bits": grid.bits, "group_size": grid.group_size, "sym": grid.sym},
            "act_order": act_order, "n_quantized": len(qresults), "ignored": list(ignored),
            "file_bytes": inventory["file_bytes"]}
    (tmp / CARD_JSON).write_text(json.dumps(meta, indent=1, default=str))
    (tmp / CARD_FILE).write_text(render_card(card, grid, act_order, len(qresults), ignored, inventory))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    inventory.pop("layout")
    log.info("exported %d packed linears (W%d g%d %s) to %s: %.1f MB", len(qresults), grid.bits, grid.group_size,
             "sym" if grid.sym else "asym", out_dir, inventory["file_bytes"] / 1e6)
    return ExportResult(out_dir, len(qresults), ignored, written, inventory, time.perf_counter() - t0)


def load_exported(path: str | Path, dequantize: bool | None = None, dtype: str = "float32", tokenizer: bool = True):
    """(model, tokenizer) from an exported directory, through transformers alone (tokenizer=False:
    (model, None)).

    dequantize: None = automatic. Symmetric checkpoints load compressed (transformers' default: the
    packed weights are decompressed on the first forward pass); asymmetric ones must be loaded with
    CompressedTensorsConfig(dequantize=True), which unpacks them while loading, because transformers
    5.23 + compressed-tensors 0.20 build the zero-point parameter unpacked and reject the packed one
    (upstream: vllm-project/llm-compressor#1618).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not an exported checkpoint (no config.json)")
    qc = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors" or qc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compressed-tensors {FORMAT} checkpoint")
    asym = any(not grp["weights"]["symmetric"] for grp in qc["config_groups"].values())
    if dequantize is None:
        dequantize = asym
    if asym and not dequantize:
        raise ValueError(f"{path} is asymmetric: transformers cannot load its packed zero points compressed; "
                         "load it with dequantize=True (CompressedTensorsConfig(dequantize=True))")
    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    with warnings.catch_warnings():  # passing a loading-only config always warns that the file's config wins
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kw)
    model.config.use_cache = False
    return model.eval(), (AutoTokenizer.from_pretrained(path) if tokenizer else None)


def card_from_run(cfg, ppl=None, **extra) -> dict:
    """Model-card entries of a RunConfig-like cfg and its PerplexityResult (None: not measured)."""
    m, c, e = cfg.method, cfg.calib, cfg.eval
    card = {"base_model": cfg.model.source, "method": m.name,
            "calibration": f"{c.n_samples} x {c.seq_len} tokens of {c.corpus} (train split, seed {c.seed})",
            "ppl": None if ppl is None else round(float(ppl.ppl), 4)}
    if ppl is not None:
        card["ppl_protocol"] = (f"{e.corpus} test split, {ppl.n_windows} of {ppl.n_windows_available} windows x "
                                f"{ppl.seq_len} tokens ({ppl.n_tokens_scored} scored), in-memory fake-quant model")
    if m.preprocess:
        card["regularization"] = (f"beta={m.beta_label}, {m.iters} proximal-gradient iterations, "
                                  f"alpha={m.alpha or 'default'}")
    if m.block_transform == "awq":
        card["awq"] = (f"activation-aware scales folded into the preceding norms / linears (grid {m.awq.grid}), "
                       f"clipping search ({m.awq.clip_grid} ratios down to {float(m.awq.ratios().min()):g})")
    if m.block_transform == "omniquant":
        oq, bits = m.omniquant, cfg.quant.bits
        card["omniquant"] = (f"learnable weight clipping: per (row, group) clipping of min / max learned per block "
                             f"on the block-output error ({oq.epochs_at(bits)} epochs, lr {oq.lr_at(bits):g}, "
                             f"{oq.windows(c.n_samples)} windows, batch {oq.batch_size}), then RTN on those ranges")
    if m.model_transform:
        learned = (f", learned by {m.rotation.steps} Cayley-SGD steps (lr {m.rotation.lr:g})"
                   if m.model_transform == "spinquant" else "")
        card["rotation"] = (f"{m.model_transform}: norms fused, residual stream and v/o heads rotated (seed "
                            f"{m.rotation.seed}{learned}), fused into the weights; embeddings untied")
    if m.quantizer == "gptq":
        g = m.gptq
        card["gptq"] = (f"damp_percent={g.damp_percent:g}, block_size={g.block_size}, act_order={g.act_order}, "
                        f"static_groups={g.static_groups}, true_sequential={cfg.loop.true_sequential}")
    card.update(extra)
    return card


def render_card(card: dict, grid: QuantGrid, act_order: bool, n_quantized: int, ignored, inventory: dict) -> str:
    """The README.md model card: front matter, what was done, and how to load it."""
    g = "per-channel" if grid.group_size == -1 else f"group size {grid.group_size}"
    rows = [("quantization", f"W{grid.bits} {g}, {'symmetric' if grid.sym else 'asymmetric'} integer grid; "
                             f"act-order: {'yes (static groups)' if act_order else 'no'}"),
            ("format", f"compressed-tensors {FORMAT}: {n_quantized} linears packed; kept dense: "
                       f"{', '.join(ignored) or 'none'}"),
            ("checkpoint size", f"{inventory['file_bytes'] / 1e6:.2f} MB of safetensors"),
            *((k, "not measured" if v is None else v) for k, v in card.items())]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    load = ("model = AutoModelForCausalLM.from_pretrained(path)" if grid.sym else
            "model = AutoModelForCausalLM.from_pretrained(\n"
            "    path, quantization_config=CompressedTensorsConfig(dequantize=True))")
    note = "" if grid.sym else ("\nAsymmetric checkpoints need `dequantize=True` in transformers (its compressed "
                                "path rejects packed zero points, vllm-project/llm-compressor#1618).\n")
    served = "" if grid.bits in SERVED_BITS else (f"\nvLLM's compressed-tensors kernels serve {SERVED_BITS} bits; "
                                                  f"this W{grid.bits} checkpoint is for transformers.\n")
    return (f"---\nlibrary_name: transformers\ntags: [compressed-tensors, astro, quantized, w{grid.bits}]\n---\n\n"
            f"# {card['base_model']} {card['method']} W{grid.bits}\n\n"
            "Weights reconstructed/quantized by the Astro reproduction codebase. The reconstructed weights "
            "replace the originals, so this is a plain group-quantized checkpoint: no extra operator at inference.\n\n"
            f"| | |\n|---|---|\n{table}\n\n## Load\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig\n"
            f"{load}\ntokenizer = AutoTokenizer.from_pretrained(path)\n```\n{note}{served}")
