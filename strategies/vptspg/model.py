"""VPTSP-G's network: BitFit + deep VPT embedding branch and the semantic-proxy branch over one frozen ViT.

Reference (re-implemented from reading): Noahsark/ParameterEfficient-DML @ c7c9416 ``architectures/peft_vit.py``
(``Network.forward_feature`` / ``forward_head``, ``forward_proxy_mix_bias``, ``_proxies_generator``,
``_semantic_mix_with_container``).

* Embedding: deep VPT prompts ``(depth, n_prompts, D)`` (xavier-normal per layer, acting through every block's
  keys/values: ``PromptedViT.forward_features``), CLS after the ViT's norm, ``LayerNorm -> Linear`` to ``E``,
  L2-normalised.
* Proxies: every sample runs the same ViT with its CLASS's prompts ``(depth, C, n_class_prompts, D)`` (no shared
  prompts), an isolated ``LayerNorm -> Linear`` head, L2-normalised; per class in the batch a GRU cell steps over its
  ``k`` samples starting from the class's memory row; the rows are written back and the memory re-normalised (a
  buffer, never learnt); proxies = ``ratio * bias + (1 - ratio) * memory`` over all classes (``bias`` learnable).
* Prompt depth and step (the reference's ``prompt_depth`` / ``prompt_block_step``, ``p_prompt_depth`` /
  ``prompt_p_block_step``): prompts go into the first ``depth`` blocks, block ``i`` using the first
  ``n - i * step`` tokens (none once that is <= 0).
* BitFit: the backbone's biases are trainable copies substituted at forward time (``torch.func.functional_call``),
  so the shared backbone module stays bit-identical; the trained biases are the copies (same values, same update as
  training the originals in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ctta.strategies.vptspg.bank import BankState, PromptBank
from ctta.strategies.vptspg.parts import ProxyGRUCell
from torch import nn

from ctta.backbones.vit import PromptedViT

__all__ = ["VPTSPGModel", "group_by_class"]


def _xavier_normal(*shape: int) -> torch.Tensor:
    return nn.init.xavier_normal_(torch.empty(*shape))


def _head(d: int, e: int) -> nn.Sequential:
    """``LayerNorm(d) -> Linear(d, e)`` with the reference's init (xavier-uniform weight, zero bias)."""
    lin = nn.Linear(d, e)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return nn.Sequential(nn.LayerNorm(d), lin)


def group_by_class(labels: torch.Tensor, k: int) -> torch.Tensor:
    """The classes of a class-balanced batch ``[a]*k + [b]*k + ...`` as ``(P,)``; raises if it is not one."""
    if labels.numel() % k:
        raise ValueError(f"a batch of {labels.numel()} is not P classes x {k} samples (class-balanced sampler)")
    groups = labels.view(-1, k)
    classes = groups[:, 0]
    if not bool((groups == classes[:, None]).all()) or classes.unique().numel() != classes.numel():
        raise ValueError(f"the proxy branch needs P distinct classes x {k} consecutive samples, got {labels.tolist()}")
    return classes


class VPTSPGModel(nn.Module):
    """Frozen ``PromptedViT`` + BitFit biases, deep prompts, embedding head, class prompts, proxy head, GRU, proxies.

    Args:
        backbone: a timm ViT or ``PromptedViT`` (frozen; never modified).
        num_classes: training classes C (one proxy and one set of class prompts each).
        embed_dim: embedding size E; n_prompts / n_class_prompts: tokens per layer of the shared / class prompts.
        bias_ratio: weight of the learnable bias proxy; k: samples per class in a training batch;
        activation: the GRU cell's candidate activation (``relu`` = the reference's ``gru_relu``).
        layout: ``(prompt_depth, prompt_step, class_prompt_depth, class_prompt_step)``; a depth of None = every
            block, step 0 = the same number of tokens in every block.
        bank_rows: None (class prompts resident: the parameter ``class_prompts``), or the classes per batch ``P``:
            the class prompts live in a CPU ``PromptBank`` (``bank``) and a ``(depth, P, n, D)`` parameter
            ``class_prompt_buffer`` holds the batch's classes (the strategy swaps them around each update).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, embed_dim: int = 384, n_prompts: int = 10,
                 n_class_prompts: int = 3, bias_ratio: float = 0.5, k: int = 2, activation: str = "relu",
                 layout: tuple = (None, 0, None, 0), bank_rows: int | None = None) -> None:
        super().__init__()  # fmt: skip
        self.backbone = (backbone if isinstance(backbone, PromptedViT) else PromptedViT(backbone)).requires_grad_(False)
        d, vit_depth = self.backbone.embed_dim, self.backbone.depth
        self.bias_ratio, self.k = float(bias_ratio), int(k)
        depth = min(layout[0] or vit_depth, vit_depth)
        class_depth = min(layout[2] or vit_depth, vit_depth)
        self.prompt_step, self.class_prompt_step = int(layout[1]), int(layout[3])
        self.bias_names = [n for n, _ in self.backbone.named_parameters() if "bias" in n]
        self.biases = nn.ParameterList([nn.Parameter(p.detach().clone()) for n, p in self._backbone_biases()])
        self.head = _head(d, embed_dim)
        self.proxy_bias = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(num_classes, embed_dim)) / 8.0)
        memory = F.normalize(nn.init.xavier_uniform_(torch.zeros(num_classes, embed_dim)) / 8.0, dim=-1)
        self.register_buffer("memory", memory)  # (C, E), updated by the GRU, never learnt
        self.gru = ProxyGRUCell(embed_dim, embed_dim, activation)
        self.proxy_head = _head(d, embed_dim)
        self.prompts = nn.Parameter(torch.stack([_xavier_normal(1, n_prompts, d)[0] for _ in range(depth)]))
        class_prompts = torch.stack([_xavier_normal(num_classes, n_class_prompts, d) for _ in range(class_depth)])
        self.bank = None if bank_rows is None else PromptBank(class_prompts)  # (depth, C, n, D) on the CPU
        if self.bank is None:
            self.class_prompts = nn.Parameter(class_prompts)  # (depth, C, n, D)
        else:
            self.class_prompt_buffer = nn.Parameter(torch.zeros(class_depth, bank_rows, n_class_prompts, d))
            self.bank_store = BankState(self.bank)  # the bank in the state_dict (checkpoints)

    def _backbone_biases(self):
        params = dict(self.backbone.named_parameters())
        return [(n, params[n]) for n in self.bias_names]

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: torch.Tensor, prompts: dict[int, torch.Tensor]) -> torch.Tensor:
        """CLS feature ``(B, D)`` of the prompted ViT with the trainable biases in place of the backbone's."""
        params = dict(zip(self.bias_names, self.biases))
        return torch.func.functional_call(self.backbone, params, (x,), {"prompts": prompts})

    @staticmethod
    def layer_prompts(bank: torch.Tensor, step: int, rows: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """``{block: tokens}`` of a prompt bank ``(depth, [C,] n, D)``: block ``i`` gets its first ``n - i step``
        tokens (of the classes ``rows`` when given: ``(B, n_i, D)``)."""
        out = {}
        for i, p in enumerate(bank):
            n = p.shape[-2] - i * step
            if n <= 0:
                break
            out[i] = (p if rows is None else p[rows])[..., :n, :]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``(B, E)``."""
        feats = self.features(x, self.layer_prompts(self.prompts, self.prompt_step))
        return F.normalize(self.head(feats), dim=-1)

    def semantic_proxies(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """All class proxies ``(C, E)`` after this batch's memory update (graph through the batch's rows)."""
        classes = group_by_class(labels, self.k)  # (P,)
        prompts = self.layer_prompts(*self._class_prompt_rows(classes, labels))  # block -> (B, n_i, D)
        p = F.normalize(self.proxy_head(self.features(x, prompts)), dim=-1)  # (B, E)
        steps = p.view(len(classes), self.k, -1)  # (P, k, E)
        h = self.memory[classes]
        for i in range(self.k):
            h = self.gru(steps[:, i].to(h.dtype), h)
        memory = F.normalize(self.memory.index_put((classes,), h.to(self.memory.dtype)), dim=-1)  # (C, E)
        with torch.no_grad():
            self.memory.copy_(memory.detach())
        return self.bias_ratio * self.proxy_bias + (1 - self.bias_ratio) * memory

    def _class_prompt_rows(self, classes: torch.Tensor, labels: torch.Tensor) -> tuple:
        """``(bank, step, rows)`` for ``layer_prompts``: the resident parameter by label, or the bank's buffer by
        the row its class was withdrawn to."""
        if self.bank is None:
            return self.class_prompts, self.class_prompt_step, labels
        if self.bank.classes is None or not torch.equal(self.bank.classes, classes.cpu()):
            raise RuntimeError("the prompt bank holds other classes: withdraw the batch's classes first")
        rows = torch.arange(len(classes), device=labels.device).repeat_interleave(self.k)  # (B,)
        return self.class_prompt_buffer, self.class_prompt_step, rows

    def all_proxies(self) -> torch.Tensor:
        """Proxies ``(C, E)`` from the current memory (no update)."""
        return self.bias_ratio * self.proxy_bias + (1 - self.bias_ratio) * self.memory
