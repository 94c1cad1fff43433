"""The compiler frontend of issue 12, step 1: import the float model, find its quantization
points on the graph, and calibrate through the graph.

    HF dir / HFCheckpoint
      -> importer.import_model       torch.export (eager attention, batch and seq symbolic)
                                     + TVM's from_exported_program; weights keep their HF names
      -> passes.FoldLayerNorm        I-BERT's hand-written float LayerNorm -> nn.layer_norm
      -> passes.find_quantization_points
                                     every quantized tensor, named from the graph's weights,
                                     with its kind (int8 activation, wide residual, GELU input..)
      -> passes.ExposeQuantizationPoints + float_vm.FloatVM
                                     per-channel max |x| over real tokens, run in the Relax VM
      -> calibrate.calibrate_ranges  {today's point name: (max |x|, per-channel max |x|)}

``legacy_names`` maps the graph's points to today's hand-listed names
(``quantization.calibrate.quantization_points``); on BERT, RoBERTa and I-BERT bodies with either head the
two sets are equal, and the ranges agree with ``calibrate.collect_ranges`` to float32
rounding (tests/frontend, tests/passes).

Step 2 (``lower.integer_module``, what ``ibert-tvm compile`` builds): the imported module lowered
to the integer model with ``ModelPlan`` (its op plans and integer tensors)::

      -> passes.FoldLayerNorm -> passes.CanonicalizeViews -> passes.LowerToInteger(plan)
      -> passes.CanonicalizeViews -> passes.EliminateFloat
      -> (IRModule, param names, arrays)   for passes.pipeline.build (VerifyIntegerOnly inside)

bit-identical to the hand-built ``IntBertModel`` it replaced on the five tiny architectures at
batch 1-8 x sequence 1-128 with padding, and on MiniLM (tests/passes/test_lower_to_integer.py);
with ``CanonicalizeViews`` its fused kernels are the hand-built model's, so the committed tuning
database still applies.

Calibration (``quantization.calibrate``) hooks the PyTorch modules at the points found on the
graph (``points.hook_points``); the hand-written list is gone (kept as a test oracle: the two
are equal on every architecture and head, and the artifact is reproduced bit for bit).

Not done yet (issue 12): the op plans are still built by ``plan.ModelPlan`` from the points'
scale names (``legacy_names`` and ``LowerToInteger``'s ``_plan_index`` are the bridges), and
golden still walks ``golden.encoder_np``.
"""
