.intel_syntax noprefix
vpaddd xmm0, xmm1, xmm2
vpaddd ymm0, ymm1, ymm2
vpalignr ymm1, ymm2, ymm3, 5
vpaddd zmm1, zmm2, [rax+0x40]
vmovdqu32 zmm1, [rip+0x1000]
vpaddd ymm1, ymm2, [rbp*4+0x10]
vzeroupper
addr32 vmovdqu ymm0, [eax]
vmovdqu ymm0, fs:[rax]
vfmadd231ps ymm0, ymm1, ymm2
shlx rax, rbx, rcx
andn rax, rbx, rcx
kmovq k1, rax
vaddps zmm0{k1}, zmm1, zmm2, {rn-sae}
vaddss xmm0, xmm1, xmm2
vaddss xmm16, xmm1, xmm2
sha256rnds2 xmm1, xmm2
adcx rax, rbx
rdseed rax
rdpid rax
clwb [rax]
clflushopt [rax]
lzcnt rax, rbx
tzcnt rax, rbx
vpaddw zmm0, zmm1, zmm2
vaesenc ymm0, ymm1, ymm2
vaesenc xmm0, xmm1, xmm2
vpdpbusd zmm0, zmm1, zmm2
{vex} vpdpbusd ymm0, ymm1, ymm2
vpopcntb zmm0, zmm1
vaddph zmm0, zmm1, zmm2
vaddsh xmm0, xmm1, xmm2
movabs rax, 0x1122334455667788
mov al, [0x1122334455667788]
gf2p8mulb xmm0, xmm1
extrq xmm0, 3, 4
lock xacquire add [rax], eax
vpbroadcastd ymm0, xmm1
vextracti128 xmm0, ymm1, 1
vcvtph2ps ymm0, xmm1
vpmullq zmm0, zmm1, zmm2
vpermb zmm0, zmm1, zmm2
kmovb k1, eax
crc32 eax, byte ptr [rax]
rdrand eax
xbegin .+100
popcnt rax, rbx
vaddps ymm0, ymm1, ymm2
vpermilps ymm0, ymm1, ymm2
vptest ymm0, ymm1
vbroadcastss ymm0, [rax]
vbroadcastss ymm0, xmm1
vpclmulqdq ymm0, ymm1, ymm2, 0x11
vpclmulqdq xmm0, xmm1, xmm2, 0x11
vgf2p8affineqb ymm0, ymm1, ymm2, 1
vaesenc zmm0, zmm1, zmm2
vpaddd ymm0{k1}, ymm2, ymm3
vpaddd zmm0, zmm1, [rax+rbx*8-0x80]
vpaddd zmm0, zmm1, dword bcst [rax]
vmovd xmm16, eax
vpextrd eax, xmm16, 1
vcvtsi2ss xmm16, xmm1, rax
vcvttss2si rax, xmm16
vpconflictd ymm0{k1}, ymm1
vpmadd52luq zmm0, zmm1, zmm2
vpshldd zmm0, zmm1, zmm2, 3
vpmovb2m k1, zmm2
vpternlogd zmm0, zmm1, zmm2, 0xff
vzeroall
vpcmpub k1, zmm0, zmm1, 2
vdpbf16ps zmm0, zmm1, zmm2
vcvtph2psx zmm0, ymm1
vfmadd132sh xmm0, xmm1, xmm2
vfmadd132ph zmm0, zmm1, zmm2
vgetmantph zmm0, zmm1, 1
kaddw k1, k2, k3
kunpckbw k1, k2, k3
kunpckdq k1, k2, k3
kmovw k1, [rax+8]
vpbroadcastw zmm0, eax
vpbroadcastmb2q zmm0, k1
vpsravw zmm0, zmm1, zmm2
vpsrldq zmm0, zmm1, 3
vpsrlq zmm0, [rsp+0x40], 3
lock cmpxchg16b [rax]
xrelease mov dword ptr [rax], 1
rdfsbase rax
wrgsbase rbx
xsave [rax]
xsaveopt [rax]
xrstor [rax]
xsavec [rax]
movntss [rax], xmm0
insertq xmm0, xmm1, 3, 4
insertq xmm0, xmm1
extrq xmm0, xmm1
prefetchw [rax]
prefetch [rax]
mov cr0, rax
mov rax, dr7
enter 16, 1
ret 8
mov ax, 0x1234
test byte ptr [rax], 1
test word ptr [rax], 1
test dword ptr [rip+16], 1
not qword ptr [rax]
pextrw [rax], xmm0, 1
pextrw eax, xmm0, 1
movdqu xmm0, gs:[rax]
addr32 mov eax, [eax+ecx*2]
fs lea rax, [rax]
pause
endbr64
monitor
mwait
movsd xmm0, xmm1
movq mm0, mm1
pmaddubsw mm0, mm1
femms
