"""Flat-vector reference implementations written straight from the spec's formulas (float64).

They concatenate every tensor (missing = 0) into one vector: exactly what the package must not
do at scale, and exactly what makes them easy to check by eye against methods.md."""

import numpy as np
import torch


def flatten(grads, shapes):
    return np.concatenate([
        np.zeros(int(np.prod(s))) if g is None else g.double().reshape(-1).numpy()
        for g, s in zip(grads, shapes)
    ])


def segments(shapes):
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(slice(start, start + n))
        start += n
    return out


def graddiff(gf, gr, gamma, alpha):
    return gamma * gf + alpha * gr


def sago(gf, gr, gamma, alpha, prefer_retain=False):
    conflict = gf * gr < 0
    agree = gamma * gf + alpha * gr if prefer_retain else gamma * gf
    return np.where(conflict, alpha * gr, agree)


def pcgrad_r(gf, gr, gamma, alpha, segs=None):
    segs = segs or [slice(0, len(gf))]
    gf = gf.copy()
    for s in segs:
        d = gf[s] @ gr[s]
        if d < 0:
            gf[s] = gf[s] - d / (gr[s] @ gr[s] + 1e-10) * gr[s]
    return gamma * gf + alpha * gr


def ngdiff(gf_hat, gr, eps=1e-8):
    g_f = -gf_hat  # paper's gradient of the ascended forget loss
    return gr / (np.linalg.norm(gr) + eps) - g_f / (np.linalg.norm(g_f) + eps)


def gru_steps(pairs, mu, gamma, alpha, retain_in_objective=True):
    ema, outs = np.zeros_like(pairs[0][0]), []
    for gf, gr in pairs:
        ema = mu * gr + (1 - mu) * ema
        gu = gamma * gf + (alpha * gr if retain_in_objective else 0)
        c = gu @ ema
        outs.append(gu - c / (ema @ ema) * ema if c < 0 else gu)
    return outs


def mgda_two_task(g1, g2):
    diff = g1 - g2
    lam = np.clip(((g2 - g1) @ g2) / (diff @ diff), 0, 1)
    return lam * g1 + (1 - lam) * g2, lam
