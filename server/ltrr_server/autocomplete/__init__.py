"""Session-aware query autocompletion on PECOS XR-Linear with k-means, trie or trie-tree hybrid label indexes."""
