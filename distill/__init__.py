"""rt2edge stage: distill (see DESIGN.md).

  distill.finetune  RT-2 co-fine-tuning of a VLA policy (robot frames + VQA), `rt2edge distill finetune`
  distill.cache     teacher cache: the teacher's action-bin distributions, `rt2edge distill cache`
  distill.kd        knowledge distillation from a cache into a student, `rt2edge distill train`,
                    and the teacher-vs-student comparison, `rt2edge distill compare`

Each has one entry function, `run(config)`, that the CLI (and a pipeline) calls.
"""
