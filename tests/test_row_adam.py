"""The distributed engine's row-wise Adam (``train/distributed/row_adam.py``) on real DGL
``DistEmbedding`` tables (DGL's standalone mode: one partition, read in-process) against the
single-process engine's ``RowAdam``: the same rows after the same gradients (a row's gradients
from several lookups averaged, as DGL's rule does), and a checkpoint of its state that resumes
exactly. Routing between ranks is covered by the 2-worker runs of
``test_distributed.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["DGL_DIST_MODE"] = "standalone"
    import torch, dgl
    from dgl.distributed import DistEmbedding
    from recgoat_dist.train.row_adam import RowAdam
    from recgoat_dist.train.distributed.row_adam import OwnerRowAdam

    out, tests = sys.argv[1], sys.argv[2]
    sys.path.insert(0, tests)
    from test_distributed import tiny_heterograph
    dgl.distributed.partition_graph(tiny_heterograph(), "tiny", 1, out, part_method="random")
    dgl.distributed.initialize(None)
    dg = dgl.distributed.DistGraph("tiny", part_config=os.path.join(out, "tiny.json"))
    n, d, lr = dg.num_nodes("item"), 4, 0.05
    emb = DistEmbedding(n, d, name="item_id", part_policy=dg.get_node_partition_policy("item"))
    torch.manual_seed(0)
    start = torch.randn(n, d)
    emb.weight[torch.arange(n)] = start
    local = torch.nn.Parameter(start.clone())
    ours, reference = OwnerRowAdam({"item": emb}, lr=lr), RowAdam([local], lr=lr)

    # Unique ids per lookup (as the engine looks up a block's input nodes); later steps reach
    # rows never seen before, whose bias correction starts at their own first step.
    gen = torch.Generator().manual_seed(1)
    steps = [torch.randperm(n // 2 + 8 * s, generator=gen)[:20] for s in range(6)]
    grads = [torch.randn(20, d, generator=gen) for _ in steps]

    def step_ours(s):
        (emb(steps[s]) * grads[s]).sum().backward()
        ours.step()

    def step_reference(s):
        local.grad = None
        (torch.nn.functional.embedding(steps[s], local, sparse=True) * grads[s]).sum().backward()
        reference.step()

    everything = {"item": torch.arange(n)}
    for s in range(3):
        step_ours(s)
        step_reference(s)
    saved_rows, saved_state = emb.weight[torch.arange(n)].clone(), ours.state_rows(everything)
    for s in range(3, 6):
        step_ours(s)
        step_reference(s)
    after = emb.weight[torch.arange(n)].clone()
    max_diff = float((after - local.detach()).abs().max())

    # Two lookups of overlapping rows in one step (as several ranks' rows reach an owner): DGL's
    # rule averages a row's gradients, so the reference gets the mean in one lookup.
    a, b = steps[0], torch.cat([steps[0][:10], steps[1][:10]])
    ga, gb = grads[0], grads[1]
    (emb(a) * ga).sum().backward()
    (emb(b) * gb).sum().backward()
    ours.step()
    both = torch.unique(torch.cat([a, b]))
    total = torch.zeros(n, d).index_add_(0, a, ga).index_add_(0, b, gb)
    count = torch.zeros(n).index_add_(0, a, torch.ones(len(a))).index_add_(0, b, torch.ones(len(b)))
    local.grad = None
    (torch.nn.functional.embedding(both, local, sparse=True) * (total[both] / count[both, None])).sum().backward()
    reference.step()
    averaged_diff = float((emb.weight[torch.arange(n)] - local.detach()).abs().max())
    moved = int((after != start).any(1).sum())

    # Resume from the step-3 checkpoint: the same rows again after steps 3-5.
    emb.weight[torch.arange(n)] = saved_rows
    ours.load_state_rows(everything, saved_state)
    for s in range(3, 6):
        step_ours(s)
    resumed = emb.weight[torch.arange(n)]

    # An unused table: a step with no lookup changes nothing.
    ours.step()
    print("RESULT " + json.dumps({
        "max_diff": max_diff,
        "averaged_diff": averaged_diff,
        "resume_diff": float((resumed - after).abs().max()),
        "idle_diff": float((emb.weight[torch.arange(n)] - resumed).abs().max()),
        "moved": moved, "rows": n,
        "trace_left": len(emb._trace)}))
""")


def test_owner_row_adam_matches_row_adam_and_resumes(tmp_path):
    script = tmp_path / "row_adam.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "DGLBACKEND": "pytorch", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "parts"), os.path.join(ROOT, "tests")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    print(result)
    assert 0 < result["moved"] < result["rows"], "the test should touch some rows and leave others"
    assert result["max_diff"] < 1e-6 and result["averaged_diff"] < 1e-6, result
    assert result["resume_diff"] == 0.0, result
    assert result["idle_diff"] == 0.0 and result["trace_left"] == 0, result


def naive_row_adam(weight, steps, lr, b1=0.9, b2=0.999, eps=1e-8):
    """DGL's rule row by row in float64: ``steps`` is a list of (row ids, gradient rows), a row's
    gradients within a step summed."""
    w = weight.double().clone()
    m, v, t = torch.zeros_like(w), torch.zeros_like(w), torch.zeros(len(w), dtype=torch.float64)
    for ids, grads in steps:
        g = torch.zeros_like(w).index_add_(0, ids, grads.double())
        for i in torch.unique(ids).tolist():
            t[i] += 1
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            w[i] -= lr * (m[i] / (1 - b1 ** t[i])) / ((v[i] / (1 - b2 ** t[i])).sqrt() + eps)
    return w


def test_row_adam_follows_the_per_row_rule_over_chunks_and_repeated_rows():
    """``RowAdam`` (the update both engines apply) against the rule written out row by row: rows
    first seen late get their own bias correction, a row looked up twice in a step gets the sum,
    untouched rows stay, and more rows than one chunk of :func:`adam_rows` are stepped."""
    from recgoat_dist.train.row_adam import RowAdam

    gen = torch.Generator().manual_seed(0)
    n, d, lr = 9000, 3, 0.01
    start = torch.randn(n, d, generator=gen)
    param = torch.nn.Parameter(start.clone())
    opt = RowAdam([param], lr=lr)
    steps = []
    for s in range(4):
        ids = torch.randint(0, 4500 + 1000 * s, (5000,), generator=gen)     # repeats; new rows later
        grads = torch.randn(len(ids), d, generator=gen)
        steps.append((ids, grads))
        param.grad = None
        (torch.nn.functional.embedding(ids, param, sparse=True) * grads).sum().backward()
        opt.step()
    want = naive_row_adam(start, steps, lr)
    assert torch.allclose(param.detach().double(), want, atol=1e-5), (param.detach().double() - want).abs().max()
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[torch.cat([ids for ids, _ in steps])] = False
    assert untouched.any() and torch.equal(param.detach()[untouched], start[untouched])


def test_row_adam_resumes_from_the_state_layout_of_earlier_checkpoints():
    """Checkpoints written before the fused state table held ``step``, ``exp_avg`` and
    ``exp_avg_sq``: loading one and stepping gives what the run would have given."""
    from recgoat_dist.train.row_adam import RowAdam

    gen = torch.Generator().manual_seed(1)
    n, d, lr = 50, 4, 0.05
    start = torch.randn(n, d, generator=gen)
    steps = [(torch.randint(0, n, (20,), generator=gen), torch.randn(20, d, generator=gen)) for _ in range(3)]
    param = torch.nn.Parameter(start.clone())
    opt = RowAdam([param], lr=lr)

    def step(ids, grads):
        param.grad = None
        (torch.nn.functional.embedding(ids, param, sparse=True) * grads).sum().backward()
        opt.step()

    step(*steps[0])
    state = opt.state_dict()
    rows = state["state"][0].pop("rows")
    state["state"][0].update(exp_avg=rows[:, :d], exp_avg_sq=rows[:, d:2 * d], step=rows[:, 2 * d])
    opt = RowAdam([param], lr=lr)
    opt.load_state_dict(state)
    step(*steps[1])
    step(*steps[2])
    want = naive_row_adam(start, steps, lr)
    assert torch.allclose(param.detach().double(), want, atol=1e-5)
