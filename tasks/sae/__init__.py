"""The SAEs laminar trains and measures, a module per job:

    course     the course's tied top-k SAE: model, hand-written step (fp32, bf16), SAELens form
    standard   SAELens's standard SAE (the base of the SAELens architectures)
    topk       SAELens's TopK SAE
    jumprelu   SAELens's JumpReLU SAE
    kernels    the step's CPU kernels: reusable buffers, ReLU-then-top-k as one bitmask
    fit        the one epoch loop (full batch or minibatches)
    measures   input statistics and metrics over all tokens, one definition for every path
    files      SAEs on disk in SAELens's format, loaded by architecture

Importing the package imports none of them."""
