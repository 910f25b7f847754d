"""What a run needs from the machine it trains on: its host memory planned from a byte budget
(memory_plan), device memory estimated (footprint), freed blocks kept for reuse (cpu_memory),
bf16 where the CPU multiplies it (cpu_bf16), and a worker's tokens kept across trials
(token_cache)."""
