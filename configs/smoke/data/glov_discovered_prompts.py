# A tiny prompt file in the format of GLOV's utils/discovered_prompts.py (jmiemirza/GLOV@4c4fe64), written for ctta's
# smoke runs and tests on the bundled digits (ctta's own strings, LLM-like artefacts on purpose: quotes, a
# <placeholder>, a template without a class slot that GLOV's rule drops). Read with ast, never imported.
lov_templates_clip = {
    'digits': ['"a photo of the handwritten digit {}."', 'a blurry scan of the number {} <stroke texture>',
               'a grey image of a {} written by hand'],
}
lov_guidance_templates_clip = {
    'digits': ["a small picture of the digit {}, drawn in one stroke.", '"the number {} on a scanned form',
               'a handwritten numeral, Please replace [digit] with the class name'],
    "EuroSAT": ['a satellite photo of {}.'],
}
