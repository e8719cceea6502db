"""Evaluation: MMRec's full-ranking protocol (recall, ndcg, precision, map @K), blocked."""
from recgoat_dist.eval.metrics import (DEFAULT_KS, METRICS, UserItems, evaluate_ranking, print_metrics_table,
                                       ranking_metrics, topk_items)

__all__ = ["DEFAULT_KS", "METRICS", "UserItems", "evaluate_ranking", "print_metrics_table", "ranking_metrics",
           "topk_items"]
