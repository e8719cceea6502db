"""``report.png``: loss parts and validation Recall/NDCG per epoch."""
from __future__ import annotations

import io


def plot_history(history: list[dict], best_epoch: int | None, title: str = "") -> bytes:
    """PNG bytes of two panels: training loss parts, and validation recall@20 / ndcg@20."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    for part in ("loss", "bpr", "reg", "cmcl", "oat"):
        values = [h["train"].get(part, 0.0) for h in history]
        if any(v > 0 for v in values):
            ax_loss.plot(epochs, values, label=part, marker="." if len(epochs) < 30 else None)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training loss (mean per batch)")
    ax_loss.legend()
    evaluated = [h for h in history if h.get("valid")]
    for key in ("recall@20", "ndcg@20", "recall@10", "ndcg@10"):
        if evaluated and key in evaluated[0]["valid"]:
            ax_val.plot([h["epoch"] for h in evaluated], [h["valid"][key] for h in evaluated], label=key,
                        marker="." if len(evaluated) < 30 else None)
    if best_epoch is not None:
        ax_val.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    ax_val.legend()
    fig.suptitle(title)
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (laid out, then closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
