#!/usr/bin/env python3
"""Reference values for the preference losses (crates/ferrotune-model/src/ops/preference.rs).

The formulas are LLaMA-Factory 0.9.5's CustomDPOTrainer (orpo, simpo, the pref_ftx term,
its metrics) and TRL 0.24's DPOTrainer.dpo_loss (sigmoid with label smoothing, hinge, ipo),
written here in torch on given sequence log-probabilities, with torch's autograd for the
gradients with respect to the policy's log-probabilities. Run by hand (PyTorch pip-installed;
never a test dependency):

    python scripts/make_preference_loss_fixture.py crates/ferrotune-model/tests/data/preference_losses.json
"""
import json
import sys

import torch
import torch.nn.functional as F

torch.manual_seed(0)
B = 5
# Sums of log-probabilities over response tokens (negative), and the responses' lengths.
chosen = -torch.rand(B, dtype=torch.float64) * 40 - 2
rejected = -torch.rand(B, dtype=torch.float64) * 40 - 2
ref_chosen = chosen + torch.randn(B, dtype=torch.float64) * 3
ref_rejected = rejected + torch.randn(B, dtype=torch.float64) * 3
chosen_tokens = torch.randint(5, 40, (B,)).to(torch.float64)
rejected_tokens = torch.randint(5, 40, (B,)).to(torch.float64)

AVERAGED = {"ipo", "orpo", "simpo"}


def case(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5, ftx=0.0):
    c_sum = chosen.clone().requires_grad_(True)
    r_sum = rejected.clone().requires_grad_(True)
    if loss_type in AVERAGED:
        c, r = c_sum / chosen_tokens, r_sum / rejected_tokens
        rc, rr = ref_chosen / chosen_tokens, ref_rejected / rejected_tokens
        c_avg = c
    else:
        c, r, rc, rr = c_sum, r_sum, ref_chosen, ref_rejected
        c_avg = c / chosen_tokens
    if loss_type == "orpo":
        log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        losses = -c + beta * -F.logsigmoid(log_odds)
        cr, rjr = beta * c.detach(), beta * r.detach()
    elif loss_type == "simpo":
        losses = -F.logsigmoid(beta * ((c - r) - simpo_gamma / beta))
        cr, rjr = beta * c.detach(), beta * r.detach()
    else:
        logits = (c - r) - (rc - rr)
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
        elif loss_type == "hinge":
            losses = torch.relu(1 - beta * logits)
        elif loss_type == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        cr, rjr = beta * (c - rc).detach(), beta * (r - rr).detach()
    if ftx > 1e-6:
        losses = losses + ftx * -c_avg
    loss = losses.mean()
    loss.backward()
    return {
        "pref_loss": loss_type,
        "beta": beta,
        "label_smoothing": label_smoothing,
        "simpo_gamma": simpo_gamma,
        "ftx": ftx,
        "loss": loss.item(),
        "losses": losses.detach().tolist(),
        "grad_chosen": c_sum.grad.tolist(),
        "grad_rejected": r_sum.grad.tolist(),
        "rewards/chosen": cr.mean().item(),
        "rewards/rejected": rjr.mean().item(),
        "rewards/accuracies": (cr > rjr).double().mean().item(),
        "rewards/margins": (cr - rjr).mean().item(),
        "logps/chosen": c.detach().mean().item(),
        "logps/rejected": r.detach().mean().item(),
    }


cases = [
    case("sigmoid", 0.1),
    case("sigmoid", 0.3, label_smoothing=0.1, ftx=0.5),
    case("hinge", 0.1),
    case("hinge", 0.05),
    case("ipo", 0.1),
    case("orpo", 0.1),
    case("orpo", 0.25, ftx=1.0),
    case("simpo", 2.0, simpo_gamma=0.5),
    case("simpo", 2.5, simpo_gamma=1.0, ftx=0.3),
]
out = {
    "about": "sequence log-probabilities of 5 pairs and the preference losses over them; see scripts/make_preference_loss_fixture.py",
    "torch": torch.__version__,
    "chosen_logps": chosen.tolist(),
    "rejected_logps": rejected.tolist(),
    "ref_chosen_logps": ref_chosen.tolist(),
    "ref_rejected_logps": ref_rejected.tolist(),
    "chosen_tokens": chosen_tokens.tolist(),
    "rejected_tokens": rejected_tokens.tolist(),
    "cases": cases,
}
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
print(f"wrote {len(cases)} cases to {sys.argv[1]}")
