"""A Proxmox VE API emulator for the lab: see ``app`` for the request pipeline."""
