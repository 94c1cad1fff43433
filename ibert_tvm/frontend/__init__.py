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

Not done yet (the rest of issue 12): nothing here is wired into ``calibrate`` or ``compile``,
which still use the hand-built path. To come: rewrite the float ops at these points to the
integer op plans in ``op/`` (linears, i-GELU, i-Softmax with the mask, i-LayerNorm, residual
adds, embedding gathers and their sum, pooling and heads, per-channel scales folded into the
next weight), remove the float casts and fold what is left so the verifier proves zero float,
then show the compiled output bit-identical to today's path from the same scales and weights
and retire the duplicated wiring (``quantization_points``, ``build_quantized``, ``plan.ModelPlan``,
``golden.encoder_np``, ``ibert_model``).
"""
