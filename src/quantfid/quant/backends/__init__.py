"""One module per quantization backend; each declares its ``BackendSchema`` and registers its build function with
``@register(SCHEMA)`` (quantfid.quant.registry). The registry imports every module here: nothing lists them."""
