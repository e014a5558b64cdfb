/** Dispatch sizes shared by medtune's webgpu programs. */

/** Workgroups along x before a dispatch spills into y (WebGPU's default per-dimension limit). */
const MAX_GROUPS_X = 65535;

/**
 * The dispatch of `invocations` flat invocations in workgroups of `workgroup`: along x, and past
 * the per-dimension limit into y as well (tfjs's flat index counts the groups of both; a program
 * returns for indices past its size).
 */
export function flatDispatch(invocations: number, workgroup: number): [number, number, number] {
  const groups = Math.ceil(invocations / workgroup);
  return groups <= MAX_GROUPS_X ? [groups, 1, 1] : [MAX_GROUPS_X, Math.ceil(groups / MAX_GROUPS_X), 1];
}
