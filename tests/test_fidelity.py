"""Fidelity checks: the block loop reproduces each model's own forward, GPTQ's lazy batches do not change
its result, the baselines' numerics beat RTN where they should, and W&B offline runs hold the record."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from astro.architectures import ARCHITECTURES
from astro.awq import AWQConfig, search_clip, search_scales
from astro.blockwise import LoopConfig, run_blocks
from astro.gptq import GPTQConfig, gptq
from astro.quantizer import QuantGrid
from astro.rotation import fake_quant_ste, learn_rotations, orthogonality_error, random_rotation
from astro.rtn import rtn
from astro.stats import h_error

GEN = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731


# -- the loop's block inputs are the model's own hidden states ---------------------------------------------

def _tiny_model(arch: str, n_layers: int = 3):
    """A tiny random model of `arch` whose layers differ where the family allows it: a sliding window
    shorter than the sequence (Mistral, Qwen2/3 from their second layer, Gemma2/3 on their sliding layers)
    and Gemma2/3's alternating sliding / global attention (Gemma3: separate local / global rotary bases)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if arch in ("mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"):
        kw["sliding_window"] = 8
    if arch in ("qwen2", "qwen3"):
        kw.update(use_sliding_window=True, max_window_layers=1)
    if arch in ("gemma2", "gemma3_text"):
        kw["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"][:n_layers]
    cfg = AutoConfig.for_model(arch, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_loop_block_inputs_match_the_model(arch):
    """With the identity pipeline, the hidden states the loop feeds block b (captured block-0 inputs, then
    propagated block by block with the captured masks, rotary embeddings and per-layer kwargs) are the
    model's own hidden_states[b], for calibration chunks of two sizes (3 + 1 sequences)."""
    model = _tiny_model(arch)
    ids = torch.randint(0, 128, (4, 32), generator=GEN(1))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    seen: dict[int, torch.Tensor] = {}

    def record(ctx):
        seen[ctx.index] = torch.cat([h.detach().clone() for h in ctx.hidden])

    res = run_blocks(model, ids, lambda name, W, stats: (W, {}), LoopConfig(batch_size=3), progress=False,
                     block_transform=record)
    assert len(res.rows) == 3 * 7 and sorted(seen) == [0, 1, 2]
    for b in range(3):
        assert torch.allclose(seen[b], ref[b], rtol=1e-5, atol=1e-6), (arch, b, float((seen[b] - ref[b]).abs().max()))


def test_block_transform_hands_parameters_to_the_pipeline():
    """A block transform's BlockOutcome: its params reach the per-linear pipeline as a fourth argument for the
    linears it names (the others get three), its rows join theirs; ctx.forward runs a single window of a chunk
    exactly as that window's slice of the chunk's output (its keyword inputs are captured for one window)."""
    from astro.blockwise import BlockOutcome
    model = _tiny_model("llama")
    ids = torch.randint(0, 128, (6, 32), generator=GEN(2))   # chunks of 3: no single-window chunk
    seen: dict[str, tuple] = {}

    def transform(ctx):
        chunk = ctx.hidden[0]
        one, whole = ctx.forward(chunk[:1]), ctx.forward(chunk)
        one, whole = (o[0] if isinstance(o, tuple) else o for o in (one, whole))
        torch.testing.assert_close(one, whole[:1], rtol=1e-5, atol=1e-6)
        return BlockOutcome({"mlp.down_proj": {"tag": ctx.index}}, {"self_attn.o_proj": ("clip", ctx.index)})

    def process(name, W, stats, *params):
        seen[name] = params
        return W, {}

    res = run_blocks(model, ids, process, LoopConfig(batch_size=3), progress=False, block_transform=transform)
    assert {k: v for k, v in seen.items() if v} == {f"model.layers.{b}.self_attn.o_proj": (("clip", b),)
                                                    for b in range(3)}
    assert len(seen) == 3 * 7 and [r.get("tag") for r in res.rows if r["linear"] == "mlp.down_proj"] == [0, 1, 2]


# -- GPTQ's lazy batch size ---------------------------------------------------------------------------------

def _gptq_problem(seed=0, n_out=48, n_in=160, tokens=2048):
    """Correlated inputs (a non-diagonal H) with log-normal channel scales; 160 columns: 128 is not n_in."""
    g = GEN(seed)
    mix = torch.eye(n_in) + 0.5 * torch.randn(n_in, n_in, generator=g) / n_in ** 0.5
    X = (torch.randn(tokens, n_in, generator=g) @ mix) * torch.exp(0.5 * torch.randn(n_in, generator=g))
    return torch.randn(n_out, n_in, generator=g), X.T @ X / tokens


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("grid,static", [(QuantGrid(3, -1), False), (QuantGrid(4, -1), False),
                                         (QuantGrid(3, 32), True)])
def test_gptq_is_invariant_to_the_lazy_batch_size(grid, static, act_order):
    """Lazy batch updates only defer the rank-k updates of later columns: with grids that do not depend on the
    updates (per-channel, static groups) every block size gives the same codes (seed 0 is exact: no
    rounding flip from the different summation order) and the same weights to float tolerance."""
    W, H = _gptq_problem(0)
    assert (H - torch.diag(torch.diagonal(H))).abs().max() > 0.05 * torch.diagonal(H).max()   # really coupled
    runs = {bs: gptq(W, H, grid, GPTQConfig(block_size=bs, act_order=act_order, static_groups=static))
            for bs in (1, 7, 128, 160)}
    for bs, q in runs.items():
        assert torch.equal(q.codes, runs[1].codes), bs
        assert torch.allclose(q.W_q, runs[1].W_q, rtol=0, atol=1e-5), bs
    assert not torch.equal(runs[1].W_q, rtn(W, grid).W_q)   # GPTQ did move away from RTN


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_dynamic_groups_depend_on_the_block_size_as_the_reference(act_order):
    """Dynamic groups are fitted, as in the reference implementation, on W[:, c:c+g] when column c is reached,
    i.e. on the weights updated by the earlier column blocks but not yet by the earlier columns of the same
    block. So the result is the same for every block size whose blocks start every group (block sizes
    dividing g) and differs when a group starts inside a block (block 128 with g = 32)."""
    W, H = _gptq_problem(0)
    grid = QuantGrid(3, 32)
    runs = {bs: gptq(W, H, grid, GPTQConfig(block_size=bs, act_order=act_order)) for bs in (1, 2, 8, 16, 32, 128)}
    for bs in (2, 8, 16, 32):
        assert torch.equal(runs[bs].codes, runs[1].codes), bs
        assert torch.allclose(runs[bs].W_q, runs[1].W_q, rtol=0, atol=1e-5), bs
    assert not torch.equal(runs[128].codes, runs[1].codes)


# -- the baselines beat RTN on outlier data -------------------------------------------------------------------

def _outlier_problem(seed, n_in=64, n_out=48, tokens=1024):
    """Activation outlier channels (x20 on 4 inputs, AWQ's premise) and weight outlier columns (x8 on 2
    inputs, what rotations spread out)."""
    g = GEN(seed)
    X = torch.randn(tokens, n_in, generator=g)
    X[:, :4] *= 20
    W = torch.randn(n_out, n_in, generator=g)
    W[:, 10:12] *= 8
    return W, X.T @ X / tokens, X.abs().mean(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_baselines_reduce_rtns_output_error(seed):
    """Each baseline, as its pure numerics, lowers the H-weighted output error tr(dW H dW^T) of RTN on the
    same grid (not only keeps the FP function): AWQ's scales + clip, QuaRot's randomised Hadamard rotation,
    and SpinQuant's Cayley SGD from that rotation (which must also improve on its start)."""
    W, H, m = _outlier_problem(seed)
    grid = QuantGrid(3, 16)
    err_rtn = h_error(rtn(W, grid).W_q - W, H)

    # AWQ: W diag(s) reads x diag(1/s) (H_s = diag(1/s) H diag(1/s)); clip on the scaled weights; undo s
    scales = search_scales([W], H, m, grid, AWQConfig())
    s = scales.scales.float()
    assert scales.alpha > 0
    clip = search_clip(W * s, H / s[:, None] / s[None, :], grid, AWQConfig())
    err_scaled = h_error(rtn(W * s, grid).W_q / s - W, H)
    err_awq = h_error(rtn(clip.W, grid).W_q / s - W, H)
    assert torch.allclose(W * s / s, W, atol=1e-6)
    assert err_awq <= err_scaled < 0.2 * err_rtn and err_awq < err_scaled

    # QuaRot: the rotated reader W R sees x R; quantize in the rotated basis, rotate back to compare
    R, kind = random_rotation(64, seed)
    assert kind.startswith("random_hadamard")
    Rf = R.float()
    assert torch.allclose(W @ Rf @ Rf.T, W, atol=1e-5)
    err_quarot = h_error(rtn(W @ Rf, grid).W_q @ Rf.T - W, H)
    assert err_quarot < 0.5 * err_rtn

    # SpinQuant: a few Cayley SGD steps on the RTN error (straight-through), from the QuaRot rotation
    Wd, Hd = W.double(), H.double()

    def loss(R1, R2, t):
        D = fake_quant_ste(Wd @ R1, grid) @ R1.T - Wd
        return ((D @ Hd) * D).sum()

    spin = learn_rotations(loss, R, [], steps=10, lr=1.5)
    assert orthogonality_error(spin.R1) < 1e-10
    Rs = spin.R1.float()
    err_spin = h_error(rtn(W @ Rs, grid).W_q @ Rs.T - W, H)
    assert err_spin < err_quarot < err_rtn


# -- W&B offline runs ------------------------------------------------------------------------------------------

def _wandb_records(path):
    """The protobuf Records of a .wandb file (LevelDB log format: a 7-byte ':W&B' header, then 32 KiB blocks
    of chunks with a 7-byte header: crc32, length (LE uint16), type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:               # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:              # zero padding to the end of the block
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_run_holds_the_record(tmp_path, monkeypatch):
    from astro.tracking import WandbConfig, log_record
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    record = {"key": "fidelity0test", "name": "gptq-w3g64",
              "config": {"method": {"name": "gptq"}, "quant": {"bits": 3}},
              "context": {"experiment": "table1"}, "metrics": {"ppl": 12.5, "eval_windows": 6, "unused": None},
              "timings": {"total": 3.25, "method": 1.5},
              "rows": [{"block": 0, "linear": "self_attn.q_proj", "err": 0.5, "alpha": [1.0, 2.0]},
                       {"block": 1, "linear": "mlp.down_proj", "err": 0.25, "alpha": [1.0]}]}
    assert log_record(record, WandbConfig(mode="auto"), tmp_path / "job") == "offline"
    import wandb
    wandb.teardown()   # the wandb-core service writes the run file asynchronously: stop it, so it has flushed
    runs = list((tmp_path / "job" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])

    run = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert len(run) == 1 and run[0].display_name == "gptq-w3g64"
    assert run[0].run_id.startswith("fidelity0test") and runs[0].name.endswith(run[0].run_id)   # keyed by the record
    config = {u.key: json.loads(u.value_json) for u in run[0].config.update}
    assert config["run"] == record["config"] and config["context"] == record["context"]

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in r.summary.update if u.key})
    assert summary["ppl"] == 12.5 and summary["eval_windows"] == 6 and "unused" not in summary
    assert summary["time/total"] == 3.25 and summary["time/method"] == 1.5

    tables = list(runs[0].glob("files/media/table/per_layer_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["block", "err", "linear"]                    # scalar columns only
    assert table["data"] == [[0, 0.5, "self_attn.q_proj"], [1, 0.25, "mlp.down_proj"]]
