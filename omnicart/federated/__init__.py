"""Federated training: each data owner (a store, a region, a partner shop) is a client whose rows never leave it.

``silos`` cuts a demand table into one shard per owner with the features its client computes from its own rows;
``linear`` is the demand model and its local update (numpy only: it runs inside the Flower client processes too);
``flower_app`` is the Flower ServerApp/ClientApp pair (SecAgg+, client-side clipping, Gaussian noise), run from its
own virtual environment by ``runner``; ``accountant`` turns a noise multiplier and a round count into (ε, δ).
"""
