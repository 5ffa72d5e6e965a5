"""What an audit takes in: suites of counterfactual pairs (`suite`, and `importing` of public
data sets such as CrowS-Pairs), and models (`model`: one loading path for hub ids, folders and
GGUF files; `architecture`: the adapter contract that says where each family keeps its
weights). It may import only the foundation modules (`errors`, `config`, `plugins`,
`resources`, `yamlio`, `names`, `lazy`).
"""
