"""The ground every stage stands on: errors, devices, values people type, durable writes, the
output-folder rule and the one-writer lock. It imports nothing of avfeat's stages."""
