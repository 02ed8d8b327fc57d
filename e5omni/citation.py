"""The BibTeX entry of the e5-omni paper: the training loss reports it (`citation`) and the model card reads it from
here, so the card does not import the training code."""

CITATION = """@inproceedings{chen2026e5omni,
    title={e5-omni: Explicit Cross-modal Alignment for Omni-modal Embeddings},
    author={Chen and Gao and Timofte and Sakai and Dou},
    booktitle={Findings of the Association for Computational Linguistics: ACL 2026},
    year={2026},
    eprint={2601.03666},
    archivePrefix={arXiv}
}"""
