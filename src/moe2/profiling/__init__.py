"""Cost profiles: analytic roofline model of devices and measured profiles (DESIGN.md §1)."""
